"""Which URLs the workflow fetches: http, https and data URLs. Others are `invalid` rows, refused at planning
with the reason, never handed to the download tool (a `file://` URL would copy a local file into the data)."""

import numpy as np
import pandas as pd

SCHEMES = ("http", "https", "data")
_SCHEME = r"^([A-Za-z][A-Za-z0-9+.-]*):"
_HOST = r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s@]*@?[^/?#:\s]"  # something after the slashes, before any path


def url_problems(urls: pd.Series) -> np.ndarray:
    """Per URL, why it is not fetched ('' when it is), vectorized: planning runs over every input row."""
    schemes = urls.str.extract(_SCHEME, expand=False).str.lower()
    problems = np.full(len(urls), "", dtype=object)
    empty = (urls == "").to_numpy()
    no_scheme = schemes.isna().to_numpy() & ~empty
    other = ~schemes.isin(SCHEMES).to_numpy() & ~no_scheme & ~empty
    web = schemes.isin(("http", "https")).to_numpy()
    no_host = web & ~urls.str.contains(_HOST, regex=True).to_numpy()
    problems[empty] = "empty url"
    problems[no_scheme] = "no URL scheme: only http, https and data URLs are fetched"
    for index in other.nonzero()[0]:
        problems[index] = f"unsupported URL scheme {schemes.iloc[index]!r}: only http, https and data URLs are fetched"
    problems[no_host] = "no host in the URL"
    return problems
