"""Client libraries other than openai's, against a real server: LangChain's ChatOpenAI with tools and with
structured output (on the longer-context tiny models of test_tool_calls: the generic tool prompt does not
fit the session server's context on their tokenizer)."""
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from tests.server.test_tool_calls import tool_models, tool_server  # noqa: F401 (fixtures)

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
def chat(tool_server):  # noqa: F811
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
