"""Registered models: your own nn.Module exported with torch.export, or an architecture from the zoo."""
from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

from claas_client.transport import Transport, quoted

if TYPE_CHECKING:  # torch is an optional extra: only register_model needs it
    import torch

Format = Literal["state_dict", "pt2", "torchscript"]


def exported_program(module: "torch.nn.Module", example_input: "torch.Tensor") -> bytes:
    """`module` in eval mode as a torch.export program with a dynamic batch dimension, saved in memory."""
    try:
        import torch
    except ImportError as exc:
        raise ImportError('register_model needs torch: pip install "claas-client[torch]"') from exc
    program = torch.export.export(module.eval(), (example_input,),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


class ModelsApi:
    """Methods on `/api/models/` and `/api/architectures/`."""

    _http: Transport

    def register_model(self, name: str, module: "torch.nn.Module", example_input: "torch.Tensor",
                       description: str = "") -> dict[str, Any]:
        """Export `module` locally with torch.export and register it as `name` (version 1 holds its weights).

        `example_input` is one batch (its first dimension is the batch and may be any size).
        Returns the registered model as the server describes it.
        """
        raw = exported_program(module, example_input)
        return self.register_program(name, raw, description=description)

    def register_program(self, name: str, program: Union[bytes, str, Path], description: str = "") -> dict[str, Any]:
        """Register a torch.export program already saved (`.pt2` bytes or a path)."""
        raw = program if isinstance(program, bytes) else Path(program).read_bytes()
        files = {"file": (f"{name}.pt2", raw, "application/octet-stream")}
        return self._http.post("/api/models/", files=files, data={"name": name, "description": description})

    def register_architecture(self, name: str, architecture: str, params: Optional[dict[str, Any]] = None,
                              description: str = "", seed: int = 0) -> dict[str, Any]:
        """Register a zoo architecture (`GET /api/architectures/`); version 1 is initialised from `seed`."""
        return self._http.post("/api/models/", {"name": name, "architecture": architecture,
                                                "params": params or {}, "description": description,
                                                "seed": seed})

    def upload_weights(self, name: str, state_dict: Union[bytes, str, Path], note: str = "") -> dict[str, Any]:
        """The next version of a registered model from a state_dict file (`torch.save(model.state_dict(), p)`)."""
        raw = state_dict if isinstance(state_dict, bytes) else Path(state_dict).read_bytes()
        files = {"file": ("weights.pt", raw, "application/octet-stream")}
        return self._http.post(f"/api/models/{quoted(name)}/versions/", files=files, data={"note": note})

    def model(self, name: str) -> dict[str, Any]:
        """One registered model with its versions."""
        return self._http.get(f"/api/models/{quoted(name)}")

    def models(self) -> list[dict[str, Any]]:
        return self._http.get("/api/models/")

    def delete_model(self, name: str) -> None:
        self._http.delete(f"/api/models/{quoted(name)}")

    def architectures(self) -> list[dict[str, Any]]:
        """The zoo: architectures with their parameters and defaults."""
        return self._http.get("/api/architectures/")

    def download_model(self, name: str, version: int, format: Format = "pt2",
                       path: Optional[Union[str, Path]] = None) -> Union[bytes, Path]:
        """A registered model's version as `state_dict`, `pt2` or `torchscript`: bytes, or written to `path`."""
        return self._http.download(f"/api/models/{quoted(name)}/versions/{quoted(version)}/download", path,
                                   params={"format": format})

