"""Experiments: set up, run with a progress bar, follow, and read results."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from claas_client.errors import ClaasError
from claas_client.progress import TERMINAL, ProgressBar
from claas_client.results import Results
from claas_client.transport import Transport, quoted

POLL_S = 0.5


class ExperimentsApi:
    """Methods on `/base-scenario/...` and `/api/experiments/...`."""

    _http: Transport

    def setup(self, exp_name: str, *, overwrite: bool = False, **options: Any) -> dict[str, Any]:
        """Set up an experiment (`model`, `benchmark`, `strategy`, `training`, ... as in the REST contract).

        The server validates every option now; a refused one raises ClaasError with its sentence.
        """
        body: dict[str, Any] = {"exp_name": exp_name, **options}
        if overwrite:
            body["overwrite"] = True
        return self._http.post("/base-scenario/setup/", body)

    def experiment(self, exp_name: str) -> dict[str, Any]:
        """One experiment: status, options, progress and its `urls`."""
        return self._http.get(f"/api/experiments/{quoted(exp_name)}")

    def experiments(self) -> list[dict[str, Any]]:
        """Your experiments, newest first."""
        return self._http.get("/api/experiments/")

    def delete_experiment(self, exp_name: str) -> None:
        self._http.delete(f"/api/experiments/{quoted(exp_name)}")

    def cancel(self, exp_name: str) -> dict[str, Any]:
        """Stop a queued or running experiment at its next training iteration."""
        return self._http.post(f"/api/experiments/{quoted(exp_name)}/cancel")

    def start(self, exp_name: str) -> dict[str, Any]:
        """Queue an experiment that is set up (202); the worker trains it."""
        return self._http.post(self.experiment(exp_name)["urls"]["exec"])

    def status(self, exp_name: str) -> dict[str, Any]:
        """`{"status", "progress", "experience", "epoch", ...}`."""
        return self._http.get(self.experiment(exp_name)["urls"]["status"])

    def events(self, exp_name: str, after: int = 0) -> list[dict[str, Any]]:
        """Stored progress events with an id above `after` (`epoch_end`, `experience_end`, `status`, ...)."""
        return self._http.get(f"/api/experiments/{quoted(exp_name)}/events", params={"after": after})

    def results(self, exp_name: str) -> Results:
        """The results as they stand (partial while running)."""
        return Results(self._http.get(self.experiment(exp_name)["urls"]["results"]))

    def download_experiment_model(self, exp_name: str, path: Optional[Union[str, Path]] = None
                                  ) -> Union[bytes, Path]:
        """The final model's state_dict (`torch.load(path, weights_only=True)`)."""
        return self._http.download(f"/api/experiments/{quoted(exp_name)}/model", path)

    def run(self, exp_name: str, *, progress: bool = True, timeout: Optional[float] = None,
            progress_options: Optional[Mapping[str, Any]] = None) -> Results:
        """Start an experiment that is set up, follow it with a progress bar, and return its results.

        `progress_options` go to tqdm (for example `{"file": sys.stdout}`). A run that fails or is
        cancelled raises ClaasError with the server's reason; one still going after `timeout`
        seconds raises TimeoutError (it keeps running on the server).
        """
        self.start(exp_name)
        return self.follow(exp_name, progress=progress, timeout=timeout, progress_options=progress_options)

    def follow(self, exp_name: str, *, progress: bool = True, timeout: Optional[float] = None,
               progress_options: Optional[Mapping[str, Any]] = None) -> Results:
        """Follow a queued or running experiment until it ends; see `run`."""
        urls = self.experiment(exp_name)["urls"]
        state = self._http.get(urls["status"])
        total = int(state.get("n_experiences") or 1) * int(state.get("epochs") or 1)
        bar = ProgressBar(exp_name, total=total, enabled=progress, options=progress_options)
        deadline = None if timeout is None else time.monotonic() + timeout
        last = 0
        try:
            while True:
                # Status first, then events: when the status is final, every event before it is stored.
                state = self._http.get(urls["status"])
                for event in self.events(exp_name, after=last):
                    last = max(last, int(event["id"]))
                    bar.event(event)
                bar.status(state["status"])
                if state["status"] in TERMINAL:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"Experiment '{exp_name}' is still {state['status']} after {timeout} s.")
                time.sleep(POLL_S)
        finally:
            bar.close()
        if state["status"] != "completed":
            reason = state.get("error") or f"Experiment '{exp_name}' ended {state['status']}."
            raise ClaasError(reason, details={"exp_name": exp_name, "status": state["status"]})
        return Results(self._http.get(urls["results"]))
