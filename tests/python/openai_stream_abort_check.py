"""Streams a chat through sluice from an upstream that cuts the stream after a few chunks, with
the official OpenAI SDK: the SDK must raise (an APIError carrying sluice's error event, or a
connection error for the dropped connection), never finish the stream as if it were complete.

Usage: python openai_stream_abort_check.py http://127.0.0.1:PORT
"""
import sys

import openai
from openai import OpenAI

base = sys.argv[1].rstrip("/")
client = OpenAI(base_url=f"{base}/v1", api_key="sk-abort-check", max_retries=0)
stream = client.chat.completions.create(
    model="mock-gpt-4o",
    messages=[{"role": "user", "content": "Say hello, slowly"}],
    stream=True,
    extra_headers={"x-mock-abort-after": "3", "x-mock-token-delay-ms": "20"},
)
parts = []
try:
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
except openai.APIError as e:
    assert "mid-response" in str(e), f"the error names what happened: {e!r}"
    assert parts, "some content arrived before the cut"
    print(f"raised {type(e).__name__} after {len(parts)} parts: {e}")
    sys.exit(0)
sys.exit(f"the stream ended as if complete after {len(parts)} parts: {''.join(parts)!r}")
