"""HTTP layer: the FastAPI app factory, one router per resource, dependencies and the error table."""
