"""The HTTP service in a container: exactly `python starter.py`, which listens on DUNNING_HTTP_HOST
(0.0.0.0 in the image; 127.0.0.1 by default, right for `make up`). uvicorn honours X-Forwarded-*
from FORWARDED_ALLOW_IPS (default 127.0.0.1, a sidecar proxy).
"""

from __future__ import annotations

import starter

if __name__ == "__main__":
    starter.main()
