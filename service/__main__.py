"""`python -m service`: serve the model volume with uvicorn and the launcher's limits."""

from service.server import main

main()
