"""Use cases behind the routes: embedding, reranking, collections and search. Services take
parsed requests, call the registry, batchers and collections, and raise domain errors
(app/core/errors.py); they never see HTTP."""
