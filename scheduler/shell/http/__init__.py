"""The scheduler's HTTP API (aiohttp): routes, OpenAPI document, server."""
