"""Helpers the app tests share: opening a page in AppTest and reading what it shows."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

MAIN_SCRIPT = Path(__file__).resolve().parents[2] / "app" / "main.py"


def open_page(page: str, state: dict | None = None) -> AppTest:
    """The app opened on ``page`` (a file name under app/views), with ``state`` preset in Session State."""
    app = AppTest.from_file(str(MAIN_SCRIPT), default_timeout=120)
    for key, value in (state or {}).items():
        app.session_state[key] = value
    app.run()
    if page != "compare":
        app.switch_page(f"views/{page}.py").run()
    return app


def assert_clean(app: AppTest) -> None:
    """No exception and no error message on the page."""
    assert not app.exception, [element.value for element in app.exception]
    assert not app.error, [element.value for element in app.error]


def plotly_specs(app: AppTest) -> list[str]:
    return [element.proto.spec for element in app.get("plotly_chart")]


@dataclass
class VegaChart:
    """A Vega-Lite chart (st.altair_chart) as the page sent it: its spec and its data sets by name."""

    spec: dict
    datasets: dict[str, pd.DataFrame]

    @property
    def layers(self) -> list[dict]:
        return self.spec.get("layer", [self.spec])

    def data(self, layer: int = 0) -> pd.DataFrame:
        """The data of one layer (or of the chart, when it has no layers)."""
        view = self.layers[layer]
        return self.datasets[(view.get("data") or self.spec["data"])["name"]]

    @property
    def title(self) -> str | None:
        title = self.spec.get("title")
        return title.get("text") if isinstance(title, dict) else title


def vega_charts(app: AppTest) -> list[VegaChart]:
    charts = []
    for element in app.get("vega_lite_chart"):
        datasets = {d.name: convert_arrow_bytes_to_pandas_df(d.data.data) for d in element.proto.datasets}
        charts.append(VegaChart(json.loads(element.proto.spec), datasets))
    return charts


def image_captions(app: AppTest) -> list[list[str]]:
    return [element.captions for element in app.get("image")]


def run_key(root: Path, name: str) -> str:
    return str(root / name)


def plotly_array(value) -> np.ndarray:
    """A data array of a Plotly spec, plain or in Plotly's typed-array form ({dtype, bdata, shape})."""
    if isinstance(value, dict) and "bdata" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if isinstance(shape, str):
            shape = [int(part) for part in shape.split(",")]
        return array.reshape(shape) if shape else array
    return np.asarray(value)
