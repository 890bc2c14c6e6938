"""OpenAI's Python client against an OpenAI-compatible Chat Completions endpoint.

Usage: openai_chat.py BASE_URL MODEL. Prints `usage PROMPT COMPLETION` for one plain and
one streamed completion (the stream asks for usage with stream_options.include_usage).
"""

import sys

from openai import OpenAI

base_url, model = sys.argv[1], sys.argv[2]
# An API key is sent as `Authorization: Bearer ...`, as with a Bedrock API key.
client = OpenAI(base_url=base_url, api_key="bedrock-api-key-for-tests", max_retries=0)
messages = [
    {"role": "developer", "content": "You are terse."},
    {"role": "user", "content": "What did the Broad Street pump teach about cholera?"},
]

completion = client.chat.completions.create(
    model=model, messages=messages, max_completion_tokens=300
)
assert completion.choices[0].message.content, completion
print("usage", completion.usage.prompt_tokens, completion.usage.completion_tokens)

stream = client.chat.completions.create(
    model=model,
    messages=messages,
    max_tokens=200,
    stream=True,
    stream_options={"include_usage": True},
)
text, usage = "", None
for chunk in stream:
    for choice in chunk.choices:
        text += choice.delta.content or ""
    if chunk.usage is not None:
        usage = chunk.usage
assert text, "streamed text"
assert usage is not None, "a usage chunk"
print("usage", usage.prompt_tokens, usage.completion_tokens)
