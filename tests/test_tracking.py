"""Run metrics and the opt-in energy tracking of the comparison trainers."""

import json

import pytest
import torch
from nnunetv2.training.logging.nnunet_logger import MetaLogger

from nnunetv2_segresmamba.trainers.tracking import (
    CO2_COUNTRY_ENV,
    energy_record,
    energy_tracker_from_env,
    epoch_times,
    write_run_metrics,
)


def test_no_country_means_no_tracking(monkeypatch, tmp_path):
    monkeypatch.delenv(CO2_COUNTRY_ENV, raising=False)
    assert energy_tracker_from_env(str(tmp_path), "x") is None


@pytest.mark.parametrize("bad", ["DE", "Germany", "D3U"])
def test_a_country_that_is_not_alpha3_is_refused_with_examples(monkeypatch, tmp_path, bad):
    monkeypatch.setenv(CO2_COUNTRY_ENV, bad)
    with pytest.raises(ValueError, match="alpha-3 code such as DEU"):
        energy_tracker_from_env(str(tmp_path), "x")


def test_offline_tracker_records_energy_and_co2(monkeypatch, tmp_path):
    monkeypatch.setenv(CO2_COUNTRY_ENV, "fra")
    tracker = energy_tracker_from_env(str(tmp_path), "x")
    sum(i * i for i in range(200_000))
    record = energy_record(tracker)
    assert record["country"] == "FRA" and record["energy_kwh"] > 0 and record["co2_kg"] > 0


def test_run_metrics_from_the_logger_timestamps(tmp_path):
    logger = MetaLogger(str(tmp_path), resume=False)
    for epoch, (start, end) in enumerate([(0.0, 10.0), (10.0, 30.0)]):
        logger.log("epoch_start_timestamps", start, epoch)
        logger.log("epoch_end_timestamps", end, epoch)
    logger.log("epoch_start_timestamps", 30.0, 2)  # an unfinished epoch
    assert epoch_times(logger) == [10.0, 20.0]
    path = write_run_metrics(str(tmp_path), logger, torch.device("cpu"), 1, None)
    record = json.loads(path.read_text())
    assert record["epochs"] == 2 and record["epoch_time_median_s"] == 15.0 and record["peak_gpu_memory_mib"] is None
