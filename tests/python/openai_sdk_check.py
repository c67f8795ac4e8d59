"""Drives sluice with the official OpenAI Python SDK: a plain chat, a streaming chat with
usage, and an upstream error surfaced as the SDK's own exception type.

Usage: python openai_sdk_check.py http://127.0.0.1:PORT
"""
import sys

import openai
from openai import OpenAI

base = sys.argv[1].rstrip("/")
client = OpenAI(base_url=f"{base}/v1", api_key="sk-not-a-real-key", max_retries=0)
messages = [{"role": "user", "content": "Say hello"}]

plain = client.chat.completions.create(model="mock-gpt-4o", messages=messages)
text = plain.choices[0].message.content
assert text.startswith("reply-"), text
assert plain.usage.completion_tokens == 16, plain.usage

parts, usage = [], None
stream = client.chat.completions.create(
    model="mock-gpt-4o", messages=messages, stream=True, stream_options={"include_usage": True}
)
for chunk in stream:
    if chunk.choices:
        parts.append(chunk.choices[0].delta.content or "")
    if chunk.usage:
        usage = chunk.usage
streamed = "".join(parts)
assert streamed.startswith("reply-") and streamed.endswith(" tok15"), streamed
assert usage is not None and usage.completion_tokens == 16, usage

try:
    client.chat.completions.create(model="mock-gpt-4o", messages=messages, extra_headers={"x-mock-status": "429"})
    raise AssertionError("a 429 from the upstream must reach the SDK")
except openai.RateLimitError:
    pass

try:
    client.with_options(base_url=f"{base}/nowhere").models.list()
    raise AssertionError("sluice's own 404 must reach the SDK")
except openai.NotFoundError as e:
    assert e.body["code"] == "no_route", e.body

print("openai sdk: plain, streaming and errors ok")
