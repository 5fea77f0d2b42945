"""What compiling a structured-output grammar costs, for JSON schemas of the kinds applications send,
and what the compiler's cache saves: each schema compiled cold, then again (a cache hit), with a real
tokenizer (a model folder or a manifest name).

    python -m benchmarks.grammar_compile --model smollm2-135m-instruct
"""
import argparse
import time

from benchmarks.common import emit, environment

ADDRESS = {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"},
                                            "postcode": {"type": "string", "pattern": "^[0-9]{5}$"},
                                            "country": {"enum": ["FR", "DE", "CN", "US"]}},
           "required": ["street", "city", "country"]}
SCHEMAS = {
    "weather_tool": {"type": "object", "properties": {"city": {"type": "string"},
                                                      "unit": {"enum": ["celsius", "fahrenheit"]}},
                     "required": ["city"], "additionalProperties": False},
    "calendar_event": {"type": "object", "properties": {
        "title": {"type": "string", "maxLength": 80}, "start": {"type": "string", "format": "date-time"},
        "duration_minutes": {"type": "integer", "minimum": 5, "maximum": 480},
        "attendees": {"type": "array", "items": {"type": "string", "format": "email"}, "maxItems": 20},
        "location": ADDRESS}, "required": ["title", "start", "duration_minutes"]},
    "product_listing": {"type": "object", "properties": {"products": {"type": "array", "maxItems": 50, "items": {
        "type": "object", "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                                         "name": {"type": "string"}, "price": {"type": "number", "minimum": 0},
                                         "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
                                         "in_stock": {"type": "boolean"}},
        "required": ["sku", "name", "price"]}}}, "required": ["products"]},
    "support_ticket": {"type": "object", "properties": {
        "category": {"enum": ["billing", "bug", "feature", "account", "other"]},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
        "customer": {"type": "object", "properties": {"name": {"type": "string"}, "address": ADDRESS,
                                                      "email": {"type": "string"}}, "required": ["name"]},
        "summary": {"type": "string", "maxLength": 280},
        "steps": {"type": "array", "items": {"type": "string"}},
        "resolution": {"anyOf": [{"type": "null"}, {"type": "string"}]}},
        "required": ["category", "priority", "summary"]},
    "extraction_record": {"type": "object", "properties": {
        "entities": {"type": "array", "items": {"type": "object", "properties": {
            "text": {"type": "string"}, "label": {"enum": ["PERSON", "ORG", "LOC", "DATE", "MONEY"]},
            "start": {"type": "integer", "minimum": 0}, "end": {"type": "integer", "minimum": 0}},
            "required": ["text", "label"]}},
        "relations": {"type": "array", "items": {"type": "array", "items": {"type": "integer"},
                                                 "minItems": 2, "maxItems": 2}}},
        "required": ["entities"]},
}


def main(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="a manifest name or model folder")
    p.add_argument("--vocab-size", type=int, help="the logits' width, if past the tokenizer's (e.g. 151936)")
    args = p.parse_args(argv)

    from corral.engine.structured_output import StructuredOutputCompiler
    from corral.engine.tokenizer import eos_token_ids, load_tokenizer
    from corral.registry.sources import local_model_dir, resolve_model
    from corral.sampling_params import StructuredOutputsParams
    model_dir = local_model_dir(args.model) or resolve_model(args.model)
    tokenizer = load_tokenizer(model_dir)
    start = time.perf_counter()
    compiler = StructuredOutputCompiler(tokenizer, args.vocab_size or len(tokenizer),
                                        list(eos_token_ids(model_dir, tokenizer)))
    setup = time.perf_counter() - start
    for name, schema in SCHEMAS.items():
        params = StructuredOutputsParams(json=schema)
        times = []
        for _ in range(2):
            start = time.perf_counter()
            compiler.compile(params)
            times.append(time.perf_counter() - start)
        emit({**environment(), "benchmark": "grammar_compile", "model": args.model, "schema": name,
              "tokenizer_setup_ms": round(setup * 1000, 1), "cold_ms": round(times[0] * 1000, 2),
              "cached_ms": round(times[1] * 1000, 3)})


if __name__ == "__main__":
    main()
