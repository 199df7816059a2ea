"""The API and the pages as FastAPI routers, which `latentz.server.app` includes."""
