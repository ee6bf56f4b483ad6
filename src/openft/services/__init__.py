"""Use-cases behind the API and the CLI. No FastAPI here: services raise `openft.errors` and return
`openft.protocol` objects, so the same code serves HTTP, the CLI and tests."""
