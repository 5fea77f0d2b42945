"""OpenAI's Responses API (POST /v1/responses, GET and DELETE /v1/responses/{id}) over the chat path:
input items become chat messages, the chat generation's reasoning, text and tool calls become output items
and streamed events. Responses are kept in a bounded store for previous_response_id."""
