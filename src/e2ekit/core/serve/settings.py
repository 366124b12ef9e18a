"""Server settings: the ``serve:`` section of every kit's YAML config.

Kept free of FastAPI/uvicorn imports so the config schema can load it cheaply.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ServeSettings(BaseModel):
    """How the model server listens, batches and protects itself."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 for all.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    max_batch_size: int = Field(32, ge=1, description="Most items per model call.")
    max_wait_ms: float = Field(
        5.0, ge=0, description="Longest wait after the first queued item to fill a batch."
    )
    max_queue: int = Field(
        1024, ge=1, description="Most items waiting per endpoint; beyond it requests get 503."
    )
    max_request_bytes: int = Field(
        2_000_000, ge=1, description="Largest request body accepted; beyond it 413."
    )
    max_items_per_request: int = Field(
        256, ge=1, description="Most items in one request; beyond it 413."
    )
    max_image_pixels: int = Field(
        4096 * 4096,
        ge=1,
        description="Largest image (width x height) the vision kits accept, read from the "
        "header before decoding; beyond it 413. Bounds each request's memory: a small "
        "compressed file can declare a huge picture.",
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait for a request's results; beyond it 504."
    )
    graceful_timeout_s: float = Field(
        10.0, ge=0, description="Time given to in-flight requests on shutdown."
    )

    @model_validator(mode="after")
    def _request_fits_queue(self) -> ServeSettings:
        # A request larger than the queue could never be accepted: catch it at config time.
        if self.max_items_per_request > self.max_queue:
            raise ValueError(
                f"max_items_per_request ({self.max_items_per_request}) must not exceed "
                f"max_queue ({self.max_queue})"
            )
        return self
