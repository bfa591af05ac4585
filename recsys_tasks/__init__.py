"""movielens-recsys: MovieLens snapshot -> graph -> PinSage embeddings -> Milvus + SQL -> recommendations."""

__version__ = "0.1.0"
