#!/usr/bin/env bash
# Downloads into .whl/ the server's packages that the GPU machine's image lacks, the openai client
# its GPU server tests use, xgrammar, jsonschema for the GPU tests, and the packages the vLLM peer kit's
# bundle lacks for structured outputs (Python 3.12, x86-64).
# Install there with:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/cwhl .whl/*.whl && export PYTHONPATH=/tmp/cwhl
# (not /tmp/site, the peer kit's vLLM bundle: benchmarks/README.md says why)
set -euo pipefail
cd "$(dirname "$0")/.."
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
WHEELS=(fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 pydantic==2.14.4 pydantic-core==2.50.5
        annotated-types==0.8.0 typing-inspection==0.4.5 annotated-doc==0.0.7 opentelemetry-api==1.45.2
        typing-extensions==4.16.0  # pydantic 2.14 needs typing-extensions >= 4.16; the image may hold an older one
        openai==3.57.0 jiter==0.19.0 sniffio==1.3.1 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5
        xgrammar==0.2.9 apache-tvm-ffi==0.1.15.post2  # structured outputs
        jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
        attrs==26.1.0  # the GPU structured-output tests validate with jsonschema
        httptools==0.9.0 uvloop==0.23.0  # the server's HTTP parser and event loop
        lm-format-enforcer==0.11.3 interegular==0.3.3 outlines_core==0.2.14)  # imported by the vLLM peer's
                                                    # structured outputs (benchmarks/peer_vllm_structured.py)
mkdir -p .whl
for wheel in "${WHEELS[@]}"; do
    # shellcheck disable=SC2086
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        $PLATFORMS -d .whl "$wheel"
done
ls -1 .whl
