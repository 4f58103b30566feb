"""One way to reach Temporal: the client every process uses, with the engine's data converter."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.service import TLSConfig

from dunning.codec import codec_for, data_converter
from dunning.config import Settings


async def connect(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_target,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(codec_for(settings)),
        tls=tls_config(settings),
        api_key=settings.temporal_api_key,
    )


def tls_config(settings: Settings) -> TLSConfig | bool:
    """mTLS with TEMPORAL_TLS_CERT/KEY (+ TEMPORAL_TLS_CA); TLS alone for an API key (Temporal Cloud)."""
    if settings.temporal_tls_cert is None and settings.temporal_tls_ca is None:
        return settings.temporal_tls or settings.temporal_api_key is not None
    return TLSConfig(
        client_cert=settings.temporal_tls_cert.read_bytes() if settings.temporal_tls_cert else None,
        client_private_key=settings.temporal_tls_key.read_bytes() if settings.temporal_tls_key else None,
        server_root_ca_cert=settings.temporal_tls_ca.read_bytes() if settings.temporal_tls_ca else None,
        domain=settings.temporal_tls_server_name,
    )
