"""The service's routes, one module per concern; `service.app` includes each router."""
