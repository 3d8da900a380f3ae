"""token_http: the aiohttp service issuing Agora tokens and keeping the seed's REST routes."""
