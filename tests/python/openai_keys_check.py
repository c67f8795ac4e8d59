"""Drives sluice's client keys with the official OpenAI Python SDK: a wrong key raises
AuthenticationError, a model outside the key's globs PermissionDeniedError, a good key gets
its answer.

Usage: python openai_keys_check.py http://127.0.0.1:PORT KEY
"""
import sys

import openai
from openai import OpenAI

base, key = sys.argv[1].rstrip("/"), sys.argv[2]
messages = [{"role": "user", "content": "Say hello"}]

good = OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
plain = good.chat.completions.create(model="mock-gpt-4o", messages=messages)
assert plain.choices[0].message.content.startswith("reply-"), plain

wrong = OpenAI(base_url=f"{base}/v1", api_key="sk-sluice-made-up", max_retries=0)
try:
    wrong.chat.completions.create(model="mock-gpt-4o", messages=messages)
    raise AssertionError("a made-up key must be refused")
except openai.AuthenticationError as e:
    assert e.status_code == 401 and e.body["code"] == "invalid_api_key", e.body

try:
    good.chat.completions.create(model="gpt-4o", messages=messages)
    raise AssertionError("a model outside the key's globs must be refused")
except openai.PermissionDeniedError as e:
    assert e.status_code == 403 and e.body["code"] == "model_not_allowed", e.body

print("openai sdk: keys ok")
