"""Curation pipeline: raw crawl in, filtered and deduplicated documents, tokenizer and token shards out.

Importing this package is cheap and pulls in nothing heavy: `formats.token_shards` must stay
importable where only numpy and pyarrow exist (the GPU trainer machine).
"""

__version__ = "0.1.0"
