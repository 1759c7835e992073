"""On-disk contracts shared by every layer: manifests, token shards, benchmark task files, the DATA
folder layout and the base error. numpy/pyarrow only; imports nothing of ours."""
