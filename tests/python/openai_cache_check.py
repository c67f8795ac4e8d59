"""Streams the same chat twice through a caching sluice route with the official OpenAI SDK:
the first is a miss from the upstream, the second a replay from the cache. Both must parse
without error and carry the same content; the second must say it was a hit.

Usage: python openai_cache_check.py http://127.0.0.1:PORT
"""
import sys

from openai import OpenAI

base = sys.argv[1].rstrip("/")
client = OpenAI(base_url=f"{base}/v1", api_key="sk-cache-check", max_retries=0)
messages = [{"role": "user", "content": "Say hello from the cache check"}]


def stream_once():
    raw = client.chat.completions.with_raw_response.create(
        model="mock-gpt-4o", messages=messages, stream=True, temperature=0
    )
    cache = raw.headers.get("x-sluice-cache")
    parts, finish = [], None
    for chunk in raw.parse():
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    return cache, "".join(parts), finish


first_cache, first, first_finish = stream_once()
second_cache, second, second_finish = stream_once()
assert first_cache == "miss", f"first stream: x-sluice-cache={first_cache!r}"
assert second_cache == "hit", f"second stream: x-sluice-cache={second_cache!r}"
assert first.startswith("reply-") and first.endswith(" tok15"), first
assert second == first, f"cached stream differs:\n{first!r}\n{second!r}"
assert first_finish == second_finish == "stop", (first_finish, second_finish)

print("openai sdk: cached stream ok")
