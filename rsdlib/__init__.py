"""rsdlib: Reverse Speculative Decoding (Kim, Seo, Lee, arXiv 2509.22230), reproducible.

Modules: `paths` (folders), `models` (loading, embedded pair), `bridge` (vocabulary bridge, App. A),
`decoding` (Algorithm 1 and its baselines), `data`, `prompts`, `grading`, `metrics`, `traces`,
`train`, `evaluate`, `plots`, `reproduce`, `cli`.
"""

__version__ = "0.1.0"
