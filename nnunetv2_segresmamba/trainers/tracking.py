"""What a training run records next to nnU-Net's own files, in ``fold_X/run_metrics.json``:
wall time per epoch, peak GPU memory and, when asked for, energy and CO2 from codecarbon.

Energy is opt-in and offline (no network): set the country whose grid powers the machine,
as an ISO 3166-1 alpha-3 code, and optionally a region codecarbon knows::

    export NNUNETV2_SEGRESMAMBA_CO2_COUNTRY=DEU      # needs: pip install "nnunetv2-segresmamba[energy]"
    export NNUNETV2_SEGRESMAMBA_CO2_REGION=...       # optional
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

import torch

from nnunetv2_segresmamba.tools.layout import RUN_METRICS_FILE

CO2_COUNTRY_ENV = "NNUNETV2_SEGRESMAMBA_CO2_COUNTRY"
CO2_REGION_ENV = "NNUNETV2_SEGRESMAMBA_CO2_REGION"


def energy_tracker_from_env(output_folder: str, project_name: str) -> Any | None:
    """A started codecarbon ``OfflineEmissionsTracker`` when the country is set, else None."""
    country = os.environ.get(CO2_COUNTRY_ENV, "").strip().upper()
    if not country:
        return None
    if len(country) != 3 or not country.isalpha():
        raise ValueError(f"{CO2_COUNTRY_ENV}={country!r} is not an ISO 3166-1 alpha-3 code such as DEU, USA or FRA")
    try:
        from codecarbon import OfflineEmissionsTracker
    except ImportError as err:
        raise RuntimeError(
            f"{CO2_COUNTRY_ENV} is set, so energy and CO2 are tracked, but codecarbon is not installed. "
            f'Run: pip install "nnunetv2-segresmamba[energy]", or unset {CO2_COUNTRY_ENV}.'
        ) from err
    region = os.environ.get(CO2_REGION_ENV) or None
    tracker = OfflineEmissionsTracker(
        country_iso_code=country, region=region, output_dir=output_folder, project_name=project_name,
        log_level="error",
    )
    tracker.start()
    return tracker


def energy_record(tracker: Any) -> dict:
    """Stops ``tracker``; energy in kWh, emissions in kg CO2eq, for the tracked process."""
    emissions_kg = tracker.stop()
    data = tracker.final_emissions_data
    return {"energy_kwh": data.energy_consumed, "co2_kg": emissions_kg, "tracked_s": data.duration,
            "country": data.country_iso_code, "region": data.region}


def epoch_times(logger: Any) -> list[float]:
    """Wall seconds of each finished epoch from nnU-Net's logger (kept across ``--c`` resumes)."""
    starts = logger.get_value("epoch_start_timestamps", None) or []
    ends = logger.get_value("epoch_end_timestamps", None) or []
    return [end - start for start, end in zip(starts, ends)]


def write_run_metrics(output_folder: str, logger: Any, device: torch.device, first_epoch_this_process: int,
                      energy: dict | None) -> Path:
    """Writes ``run_metrics.json`` from nnU-Net's ``MetaLogger``. Energy and peak memory cover this
    process only, which began at ``first_epoch_this_process`` (0 unless the run was resumed)."""
    times = epoch_times(logger)
    record = {
        "epochs": len(times),
        "epoch_time_median_s": statistics.median(times) if times else None,
        "epoch_times_s": times,
        "peak_gpu_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "first_epoch_this_process": first_epoch_this_process,
        "energy": energy,
    }
    path = Path(output_folder) / RUN_METRICS_FILE
    path.write_text(json.dumps(record, indent=2))
    return path
