"""Wire objects with OpenAI's names and shapes (pydantic only; no logic, no database)."""
