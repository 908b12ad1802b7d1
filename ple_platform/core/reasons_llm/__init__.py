"""L2 reasons (SPEC §9): an optional rewrite of the deterministic L1 reasons into natural English or honorific
Korean through the ``anthropic`` SDK, behind a deterministic safety gate, with the L1 text as the fallback on any
failure. Layer: recommend (it reads L1 reasons and product facts; governance and serving call it).

* ``l1``: ``L1Reason``, the only input the model sees: the L1 text and its grounded facts, no ids, no raw data.
* ``gate``: the deterministic rules (each with its id and message) and the verdict.
* ``judge``: the optional LLM judge, three independent votes that can only make a verdict stricter.
* ``config``: model id, base URL, timeout, prompt version from the environment; the SDK client.
* ``cache``: rewrites keyed by (L1 hash, language, model, prompt version), in process and in a DuckDB table.
* ``rewrite``: ``Rewriter``, the whole path: cache, suitability, SDK call, gate, judge, fallback, audit event.
"""
