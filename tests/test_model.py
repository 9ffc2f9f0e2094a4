"""Model builders: shapes for 2 and N classes, the pretrained backbone path (local file and URL)."""

from __future__ import annotations

import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tasks.core.errors import PawflowError
from tasks.model.model import make_model


@pytest.mark.parametrize("model", ["pawnet", "seed_cnn", "keras_xception"])
@pytest.mark.parametrize(("classes", "width"), [(2, 1), (5, 5)])
def test_output_shapes(model: str, classes: int, width: int):
    m = make_model((48, 48, 3), classes, model=model, width=8)
    out = m.predict_on_batch(np.full((3, 48, 48, 3), 128, np.float32))
    assert out.shape == (3, width)
    assert np.all((out >= 0) & (out <= 1))
    if classes > 2:
        assert np.allclose(out.sum(axis=1), 1, atol=1e-5)


def test_pawnet_is_configurable():
    small = make_model((64, 64, 3), 2, width=8, blocks=(1, 1))
    bigger = make_model((64, 64, 3), 2, width=8, blocks=(2, 2, 2), separable=True)
    assert small.count_params() < bigger.count_params()


def test_seed_cnn_is_the_seed_articles_network():
    m = make_model((64, 64, 3), 2, model="seed_cnn")
    kinds = [type(layer).__name__ for layer in m.layers]
    assert kinds == [
        "InputLayer",
        "Rescaling",
        "Conv2D",
        "MaxPooling2D",
        "Conv2D",
        "MaxPooling2D",
        "Flatten",
        "Dense",
        "Dense",
    ]
    assert [layer.units for layer in m.layers if type(layer).__name__ == "Dense"] == [512, 1]


def test_keras_xception_is_the_keras_io_network():
    m = make_model((64, 64, 3), 2, model="keras_xception", dropout=0.25, width=8, blocks=(1,))
    assert m.name == "keras_xception"
    kinds = [type(layer).__name__ for layer in m.layers]
    assert kinds[:5] == ["InputLayer", "Rescaling", "Conv2D", "BatchNormalization", "Activation"]
    convs = [layer for layer in m.layers if type(layer).__name__ == "Conv2D"]
    assert [(c.filters, c.kernel_size, c.strides) for c in convs] == [
        (128, (3, 3), (2, 2)),  # entry
        (256, (1, 1), (2, 2)),  # residual projections
        (512, (1, 1), (2, 2)),
        (728, (1, 1), (2, 2)),
    ]
    separable = [layer.filters for layer in m.layers if type(layer).__name__ == "SeparableConv2D"]
    assert separable == [256, 256, 512, 512, 728, 728, 1024]  # width/blocks do not apply
    assert kinds.count("MaxPooling2D") == 3 and kinds.count("Add") == 3
    assert kinds[-3:] == ["GlobalAveragePooling2D", "Dropout", "Dense"]
    assert m.get_layer(index=len(kinds) - 2).rate == 0.25
    assert m.output_shape == (None, 1)
    assert make_model((64, 64, 3), 2, model="keras_xception", dropout=0.0).layers[-2].name != "dropout"


def test_keras_xception_trains_a_step_and_round_trips_in_safe_mode(tmp_path: Path):
    import keras

    keras.utils.set_random_seed(11)
    m = make_model((32, 32, 3), 2, model="keras_xception")
    # eager: one step does not pay for tracing the training graph (~25 s here)
    m.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", run_eagerly=True)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    y = np.array([[0], [1], [0], [1]], "float32")
    before = [w.copy() for w in m.get_weights()]
    history = m.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(a, b) for a, b in zip(before, m.get_weights(), strict=True))
    path = tmp_path / "model.keras"
    m.save(path)
    loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    assert loaded.name == "keras_xception" and loaded.count_params() == m.count_params()
    np.testing.assert_array_equal(loaded.predict_on_batch(x), m.predict_on_batch(x))


def test_unknown_model_is_a_clear_error():
    with pytest.raises(PawflowError, match=r"train\.model"):
        make_model((32, 32, 3), 2, model="resnet9000")


@pytest.fixture(scope="module")
def mobilenet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file in the legacy HDF5 layout that Keras publishes ImageNet weights in (random weights)."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    folder = tmp_path_factory.mktemp("weights")
    base = keras.applications.MobileNetV2(input_shape=(96, 96, 3), include_top=False, weights=None)
    path = folder / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, base)
    return path


def test_backbone_from_a_local_weights_file(mobilenet_weights: Path):
    m = make_model((96, 96, 3), 3, backbone="mobilenet_v2", backbone_weights=str(mobilenet_weights))
    assert m.predict_on_batch(np.zeros((2, 96, 96, 3), np.float32)).shape == (2, 3)
    backbone = m.get_layer("mobilenetv2_1.00_96")
    assert not backbone.trainable


def test_backbone_downloads_imagenet_weights_from_keras_url(
    mobilenet_weights: Path, tmp_path: Path, monkeypatch
):
    """The real Keras download path, served from 127.0.0.1 instead of the internet."""
    from keras.src.applications import mobilenet_v2
    from keras.src.backend import config

    handler = partial(SimpleHTTPRequestHandler, directory=str(mobilenet_weights.parent))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for home in ("keras", "keras2"):
        (tmp_path / home).mkdir()  # Keras falls back to /tmp/.keras when the folder is missing
    try:
        monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path / "keras"))  # never the user's cache
        monkeypatch.setattr(mobilenet_v2, "BASE_WEIGHT_PATH", f"http://127.0.0.1:{server.server_address[1]}/")
        m = make_model((96, 96, 3), 2, backbone="mobilenet_v2", backbone_weights="imagenet")
        assert m.predict_on_batch(np.zeros((1, 96, 96, 3), np.float32)).shape == (1, 1)
        assert list((tmp_path / "keras" / "models").glob("*.h5"))
        monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path / "keras2"))
        monkeypatch.setattr(
            mobilenet_v2, "BASE_WEIGHT_PATH", f"http://127.0.0.1:{server.server_address[1]}/gone/"
        )
        with pytest.raises(PawflowError, match="could not be downloaded"):
            make_model((96, 96, 3), 2, backbone="mobilenet_v2", backbone_weights="imagenet")
    finally:
        server.shutdown()


def test_missing_local_weights_say_what_to_do(tmp_path: Path):
    with pytest.raises(PawflowError, match="does not exist"):
        make_model((96, 96, 3), 2, backbone="mobilenet_v2", backbone_weights=str(tmp_path / "none.h5"))


def test_saved_model_bytes_depend_only_on_weights_and_config(tmp_path: Path):
    import json
    import zipfile

    import keras

    from tasks.model.model import save_model

    def build() -> keras.Model:
        keras.backend.clear_session()  # layer names restart, as in a new process
        keras.utils.set_random_seed(7)
        return make_model((32, 32, 3), 2, width=8, blocks=(1,))

    first, second = build(), build()  # equal weights, other Python objects (other memory addresses)
    save_model(first, tmp_path / "a.keras")
    save_model(second, tmp_path / "b.keras")
    save_model(first, tmp_path / "c.keras")
    a = (tmp_path / "a.keras").read_bytes()
    assert a == (tmp_path / "b.keras").read_bytes() == (tmp_path / "c.keras").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.keras") as z:
        assert "date_saved" not in json.loads(z.read("metadata.json"))
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    # The renumbered shared objects still load, in safe mode, to the same predictions.
    loaded = keras.saving.load_model(tmp_path / "a.keras", compile=False, safe_mode=True)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_on_batch(x), first.predict_on_batch(x))
