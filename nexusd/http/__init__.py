"""The HTTP channel: JSON over HTTP, Server-Sent Events, OpenAPI and metrics,
as an adapter over the session service, served by hypercorn in the daemon's
nurseries."""

from ._app import HttpSettings as HttpSettings
from ._channel import HttpChannel as HttpChannel
from ._metrics import Metrics as Metrics
from ._server import HttpListener as HttpListener
