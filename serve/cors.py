"""CORS for the API, with origins from the app's config (``cors_origins``).

The FastAPI app is built at import and copied into each replica before the Ingress constructor
reads its config, so its middleware list cannot depend on that config. This middleware sits in
the list from the start and wraps Starlette's ``CORSMiddleware`` once the replica has said which
origins it allows; with none (the default) it passes every request through untouched.
"""

from fastapi.middleware.cors import CORSMiddleware


class _Settings:
    origins: tuple[str, ...] = ()


SETTINGS = _Settings()  # one Ingress per replica process: its constructor sets this once


def configure(origins) -> None:
    SETTINGS.origins = tuple(origins)


class ConfiguredCORS:
    def __init__(self, app):
        self.app = app
        self._cors = None
        self._for: tuple[str, ...] = ()

    async def __call__(self, scope, receive, send):
        origins = SETTINGS.origins
        if not origins or scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self._cors is None or self._for != origins:
            # Reads only: browsers send no credentials to the public search API.
            self._cors = CORSMiddleware(self.app, allow_origins=list(origins), allow_methods=["GET", "POST"],
                                        allow_headers=["Authorization", "Content-Type"], max_age=600)
            self._for = origins
        return await self._cors(scope, receive, send)
