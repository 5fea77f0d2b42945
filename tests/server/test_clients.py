"""Client libraries other than openai's, against a real server: LangChain's ChatOpenAI with tools and with
structured output, and the OpenAI Agents SDK running a tool loop (on the longer-context tiny models of the
tool_server fixture: the generic tool prompt does not fit the session server's context on their tokenizer)."""
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

langchain_openai = pytest.importorskip("langchain_openai")


class GetWeather(BaseModel):
    """The weather in a city."""

    city: str = Field(pattern=r"^[A-Za-z ]{1,12}$")
    unit: Literal["celsius", "fahrenheit"]


class Forecast(BaseModel):
    city: str = Field(pattern=r"^[A-Za-z]{1,10}$")
    sky: Literal["clear", "cloudy", "rain"]
    celsius: int = Field(ge=-40, le=50)


@pytest.fixture(scope="module")
def chat(tool_server):
    return langchain_openai.ChatOpenAI(base_url=f"{tool_server.url}/v1", api_key="none", model="tiny-qwen3",
                                       max_tokens=200, temperature=0, max_retries=0)


def test_langchain_bind_tools_with_required_gets_a_valid_tool_call(chat):
    tools = chat.bind_tools([GetWeather], tool_choice="required", parallel_tool_calls=False)
    (call,) = tools.invoke("What is the weather in Paris?").tool_calls
    assert call["name"] == "GetWeather"
    GetWeather(**call["args"])


def test_langchain_with_structured_output_gets_a_pydantic_object(chat):
    forecast = chat.with_structured_output(Forecast).invoke("The forecast for Paris, as JSON.")
    assert isinstance(forecast, Forecast)


agents = pytest.importorskip("agents")


def test_the_openai_agents_sdk_runs_a_tool_loop(tool_server):
    # the Agents SDK over chat completions: the model must call the tool (tool_choice required, held by a
    # grammar), the SDK runs it and ends the run with its output
    calls = []

    @agents.function_tool
    def get_weather(city: Annotated[str, Field(pattern=r"^[A-Za-z ]{1,12}$")],
                    unit: Literal["celsius", "fahrenheit"]) -> str:
        """The weather in a city."""
        calls.append((city, unit))
        return f"18 degrees {unit} in {city}"

    from openai import AsyncOpenAI
    client = AsyncOpenAI(base_url=f"{tool_server.url}/v1", api_key="none", max_retries=0)
    agent = agents.Agent(name="weather", instructions="Answer with the weather tool.", tools=[get_weather],
                         model=agents.OpenAIChatCompletionsModel(model="tiny-qwen3", openai_client=client),
                         model_settings=agents.ModelSettings(tool_choice="required", parallel_tool_calls=False,
                                                                     max_tokens=200, temperature=0),
                         tool_use_behavior="stop_on_first_tool")
    result = agents.Runner.run_sync(agent, "What is the weather in Paris?",
                                    run_config=agents.RunConfig(tracing_disabled=True))
    assert len(calls) == 1 and calls[0][1] in ("celsius", "fahrenheit")
    assert result.final_output == f"18 degrees {calls[0][1]} in {calls[0][0]}"
