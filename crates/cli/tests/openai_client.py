"""Drives the gateway with the real `openai` package, unchanged but for base_url and api_key.

Usage: python3 openai_client.py BASE_URL API_KEY MODEL
Prints one line per check and exits non-zero on the first failure.
"""
import asyncio
import io
import json
import sys
import time

import openai

base_url, api_key, model = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0)

models = [m.id for m in client.models.list()]
assert model in models, models
print("models:", models)

stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Say something about tides."}],
    max_tokens=8,
    stream=True,
    stream_options={"include_usage": True},
)
pieces, usage, finish = [], None, None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
assert len(pieces) == 8, pieces
assert usage is not None and usage.completion_tokens == 8, usage
assert finish == "length", finish
print("stream:", "".join(pieces).strip(), "| usage:", usage.total_tokens)

reply = client.chat.completions.create(
    model=model,
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
    n=2,
    max_completion_tokens=4,
    temperature=0.2,
    logprobs=True,
    top_logprobs=2,
    stop=["\n"],
    user="tester",
    metadata={"purpose": "test"},
    extra_body={"unknown_extra_field": True},
)
assert len(reply.choices) == 2, reply
assert reply.choices[0].logprobs.content[0].top_logprobs, reply.choices[0].logprobs
assert reply.usage.completion_tokens == 8, reply.usage
print("chat n=2:", reply.choices[1].message.content.strip())

completion = client.completions.create(model=model, prompt="The tide", max_tokens=3, echo=True, logprobs=1)
assert completion.choices[0].text.startswith("The tide"), completion
assert completion.choices[0].logprobs.tokens, completion
print("completion:", completion.choices[0].text)

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise SystemExit("unknown model accepted")
except openai.NotFoundError as e:
    assert e.code == "model_not_found", e
    print("unknown model: 404", e.code)

try:
    openai.OpenAI(base_url=base_url + "/v1", api_key="sk-wrong-key", max_retries=0).models.list()
    raise SystemExit("wrong key accepted")
except openai.AuthenticationError:
    print("wrong key: 401")

assert client.models.retrieve(model).id == model
try:
    client.models.retrieve("no-such-model")
    raise SystemExit("unknown model retrieved")
except openai.NotFoundError:
    print("models.retrieve: ok, unknown 404")

for field, value in [("temperature", "hot"), ("top_p", 3), ("stop", [1]), ("n", 0)]:
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], **{field: value})
        raise SystemExit(f"{field}={value!r} accepted")
    except openai.BadRequestError as e:
        assert e.param == field and field in e.message, (field, e.param, e.message)
print("invalid parameters: 400 naming each")

several = client.completions.create(model=model, prompt=["The tide", "The pool"], n=2, max_tokens=2, echo=True)
assert sorted(c.index for c in several.choices) == [0, 1, 2, 3], several.choices
assert [c.text.split(" ")[1] for c in sorted(several.choices, key=lambda c: c.index)] == ["tide", "tide", "pool", "pool"], several.choices
assert several.usage.completion_tokens == 8, several.usage
ids = client.completions.create(model=model, prompt=[101, 102, 103, 104, 105], max_tokens=1)
assert ids.usage.prompt_tokens == 5, ids.usage
print("completions: 2 prompts x n=2 ->", len(several.choices), "choices; token-id prompt", ids.usage.prompt_tokens, "tokens")

# The SDK asks for base64 and decodes it unless told otherwise.
vectors = client.embeddings.create(model=model, input=["The tide comes in", "and the pool fills"])
assert [d.index for d in vectors.data] == [0, 1] and len(vectors.data[0].embedding) == 64, vectors
assert abs(sum(x * x for x in vectors.data[0].embedding) - 1.0) < 1e-4 and vectors.data[0].embedding != vectors.data[1].embedding
assert vectors.usage.prompt_tokens == 9, vectors.usage
floats = client.embeddings.create(model=model, input="tide", dimensions=8, encoding_format="float")
assert len(floats.data) == 1 and len(floats.data[0].embedding) == 8, floats
try:
    client.embeddings.create(model=model, input=[])
    raise SystemExit("an empty input accepted")
except openai.BadRequestError as e:
    assert e.param == "input", e
print("embeddings:", len(vectors.data), "vectors of", len(vectors.data[0].embedding), "from base64;", len(floats.data[0].embedding), "floats with dimensions=8")

texts = {}
for chunk in client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], n=2, max_tokens=3, stream=True):
    for choice in chunk.choices:
        texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
assert sorted(texts) == [0, 1] and all(len(t.split()) == 3 for t in texts.values()), texts
print("stream n=2:", texts)

async def streamed_async():
    async_client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0)
    stream = await async_client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], max_tokens=4, stream=True)
    return [c async for c in stream]


chunks = asyncio.run(streamed_async())
assert sum(1 for c in chunks for ch in c.choices if ch.delta.content) == 4, chunks
print("async stream:", len(chunks), "chunks")

# The Responses API: a limit met ends it incomplete, as OpenAI does; the stream helper
# gathers the deltas into the final response.
limited = client.responses.create(model=model, input="Say something about tides.", max_output_tokens=5)
assert limited.status == "incomplete" and limited.incomplete_details.reason == "max_output_tokens", limited
assert len(limited.output_text.split()) == 5 and limited.usage.output_tokens == 5, limited
with client.responses.stream(model=model, instructions="Be brief.", input=[{"role": "user", "content": "Hello"}]) as events:
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    final = events.get_final_response()
assert final.status == "completed" and final.output_text == "".join(deltas) and final.usage.output_tokens == len(deltas), final
try:
    client.responses.create(model=model, input=5)
    raise SystemExit("a number as input accepted")
except openai.BadRequestError as e:
    assert e.param == "input", e
print("responses:", limited.status, repr(limited.output_text), "| stream:", len(deltas), "deltas,", final.status)

def ended(batch):
    """The batch once it has ended, polled as a client would."""
    deadline = time.time() + 120
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        assert time.time() < deadline, batch
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    return batch


lines = [
    json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": model, "messages": [{"role": "user", "content": f"line {i}"}], "max_tokens": 2}})
    for i in range(100)
]
upload = client.files.create(file=("input.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch")
assert upload.purpose == "batch" and upload.bytes > 0, upload
batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
                              metadata={"run": "test"})
assert batch.status in ("validating", "in_progress"), batch.status
batch = ended(batch)
assert batch.status == "completed", batch
assert batch.request_counts.total == 100 and batch.request_counts.completed == 100, batch.request_counts
output = client.files.content(batch.output_file_id).text.strip().split("\n")
assert len(output) == 100, len(output)
records = [json.loads(line) for line in output]
assert sorted(r["custom_id"] for r in records) == sorted(f"req-{i}" for i in range(100))
assert all(r["response"]["status_code"] == 200 for r in records)
assert records[0]["response"]["body"]["usage"]["completion_tokens"] == 2
print("batch:", batch.status, batch.request_counts.completed, "lines ->", batch.output_file_id)

mixed = [json.dumps({"custom_id": "good", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}}),
         json.dumps({"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions",
                     "body": {"model": model, "messages": [{"role": "user", "content": "x"}], "temperature": 9}})]
mixed_file = client.files.create(file=("mixed.jsonl", io.BytesIO("\n".join(mixed).encode())), purpose="batch")
second = client.batches.create(input_file_id=mixed_file.id, endpoint="/v1/chat/completions", completion_window="24h")
second = ended(second)
assert second.status == "completed" and (second.request_counts.completed, second.request_counts.failed) == (1, 1), second
errors = [json.loads(line) for line in client.files.content(second.error_file_id).text.strip().split("\n")]
assert [(e["custom_id"], e["response"]["status_code"], e["response"]["body"]["error"]["param"]) for e in errors] == [("bad", 400, "temperature")], errors
print("batch with a bad line: 1 completed, 1 failed with", errors[0]["response"]["body"]["error"]["message"])

response_lines = [json.dumps({"custom_id": f"resp-{i}", "method": "POST", "url": "/v1/responses",
                               "body": {"model": model, "input": f"line {i}", "max_output_tokens": 3}}) for i in range(3)]
response_file = client.files.create(file=("responses.jsonl", io.BytesIO("\n".join(response_lines).encode())), purpose="batch")
third = client.batches.create(input_file_id=response_file.id, endpoint="/v1/responses", completion_window="24h")
third = ended(third)
assert third.status == "completed" and third.request_counts.completed == 3, third
answers = [json.loads(line)["response"]["body"] for line in client.files.content(third.output_file_id).text.strip().split("\n")]
assert all(a["object"] == "response" and a["usage"]["output_tokens"] == 3 for a in answers), answers
print("batch of responses:", third.status, third.request_counts.completed, "lines")

page = client.batches.list(limit=1)
assert len(page.data) == 1 and page.data[0].id == third.id, page
assert any(f.id == upload.id for f in client.files.list())
print("ok")
