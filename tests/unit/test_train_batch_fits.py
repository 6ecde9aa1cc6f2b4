"""A batch larger than a replica's share of the training split is refused before anything starts."""

import pytest

from rayline.config import ConfigError, TrainConfig
from rayline.train.driver import check_batch_fits


def test_a_batch_that_fits_every_replica_passes():
    check_batch_fits(TrainConfig(num_workers=2, batch_size=500), train_rows=1000)


def test_a_batch_beyond_a_replicas_share_names_the_field_and_the_limit():
    with pytest.raises(ConfigError, match=r"train\.batch_size=501 .* 500 training rows .* 2 data-parallel"):
        check_batch_fits(TrainConfig(num_workers=2, batch_size=501), train_rows=1000)
