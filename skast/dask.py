"""Embed the clips of Dask collections with a fitted featurizer.

:func:`transform_partitions` embeds a :class:`dask.bag.Bag` of clips, or a
:class:`dask.dataframe.Series` (a dataframe's column) of file paths, one
partition per task, with the fitted featurizer sent once to each worker
rather than once with every partition. Needs the ``dask`` extra
(``pip install skast[dask]``); importing this module imports no part of Dask,
calling :func:`transform_partitions` does.
"""

from __future__ import annotations

import uuid

import numpy as np

__all__ = ["transform_partitions"]


def transform_partitions(featurizer, clips, *, client=None):
    """Embed a Dask bag or dataframe column of clips, partition by partition.

    Each partition is embedded by ``featurizer.transform`` in one task, so the
    result equals ``featurizer.transform`` of all the clips in order. The
    featurizer is sent to the workers once: with a :mod:`distributed`
    client, it is scattered to every worker (``Client.scatter`` with
    ``broadcast=True``) and each worker loads it once, whatever the number
    of partitions; with Dask's local schedulers, it is one task of the graph,
    shared by all partitions.

    Parameters
    ----------
    featurizer : ASTFeaturizer
        A fitted featurizer (or any fitted transformer of clips). With
        ``cache`` set on a folder every worker reaches, each clip is embedded
        once across all of them (:doc:`/user_guide/cache`).
    clips : dask.bag.Bag or dask.dataframe.Series
        The clips: file paths (readable at the same paths on every worker),
        or any clips ``transform`` accepts for a bag. Pass a dataframe's
        column, ``ddf["path"]``, not the dataframe.
    client : distributed.Client, default=None
        The client whose workers receive the featurizer. ``None`` is the
        current client (``distributed.default_client()``) if there is one,
        else the featurizer travels in the graph.

    Returns
    -------
    embeddings : dask.bag.Bag or dask.dataframe.DataFrame
        Lazy, computed with the collection's scheduler. For a bag, a bag of
        float32 rows of shape ``(n_features,)``, one per clip, in order:
        ``np.stack(embeddings.compute())`` is ``featurizer.transform`` of
        the bag's clips. For a column, a dataframe with the column's index
        and partitions, and the featurizer's ``get_feature_names_out()`` as
        its float32 columns.

    Raises
    ------
    TypeError
        If ``clips`` is neither a Dask bag nor a Dask series, or ``client``
        is not a ``distributed.Client``.
    sklearn.exceptions.NotFittedError
        If ``featurizer`` is not fitted.

    See Also
    --------
    skast.ASTFeaturizer.transform : The embeddings of clips in memory.

    Examples
    --------
    >>> import dask
    >>> import dask.bag as db
    >>> import numpy as np
    >>> from skast import ASTFeaturizer
    >>> from skast.dask import transform_partitions
    >>> tiny = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...             intermediate_size=64, max_length=64)
    >>> rng = np.random.default_rng(0)
    >>> X = [(0.1 * rng.standard_normal(4000)).astype("float32") for _ in range(6)]
    >>> featurizer = ASTFeaturizer(model_config=tiny, device="cpu").fit(X)
    >>> bag = db.from_sequence(X, npartitions=3)
    >>> with dask.config.set(scheduler="sync"):
    ...     rows = transform_partitions(featurizer, bag).compute()
    >>> np.allclose(np.stack(rows), featurizer.transform(X), atol=1e-6)
    True
    """
    import dask
    import dask.bag as db
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(featurizer)
    series = _series_type()
    if not isinstance(clips, db.Bag) and not (series and isinstance(clips, series)):
        raise TypeError(
            "clips must be a dask.bag.Bag or a dask.dataframe.Series (a "
            f"dataframe's column, such as ddf['path']), got {type(clips).__name__}"
        )
    client = _client(client)
    if client is not None:
        shared = client.scatter(featurizer, broadcast=True, hash=False)
    else:
        shared = dask.delayed(featurizer, name=f"astfeaturizer-{uuid.uuid4().hex}")
    if isinstance(clips, db.Bag):
        return clips.map_partitions(_embed_bag_partition, shared)
    import pandas as pd

    columns = [str(c) for c in featurizer.get_feature_names_out()]
    meta = pd.DataFrame({c: pd.Series(dtype=np.float32) for c in columns})
    return clips.map_partitions(_embed_series_partition, shared, columns, meta=meta)


def _series_type():
    """:class:`dask.dataframe.Series`, or ``None`` without dask.dataframe's
    own dependencies (pandas)."""
    try:
        import dask.dataframe as dd
    except ImportError:
        return None
    return dd.Series


def _client(client):
    """The distributed client to scatter to: ``client``, the current one, or
    ``None`` (no distributed, or no client)."""
    if client is not None:
        from distributed import Client

        if not isinstance(client, Client):
            raise TypeError(
                "client must be a distributed.Client or None, got "
                f"{type(client).__name__}"
            )
        return client
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:  # no client
        return None


def _embed_bag_partition(partition, featurizer) -> list:
    """One bag partition's embeddings, a row per clip."""
    clips = list(partition)
    if not clips:
        return []
    return list(np.asarray(featurizer.transform(clips), dtype=np.float32))


def _embed_series_partition(series, featurizer, columns):
    """One series partition's embeddings, as a dataframe on its index."""
    import pandas as pd

    if len(series):
        values = np.asarray(featurizer.transform(series.tolist()), dtype=np.float32)
    else:
        values = np.empty((0, len(columns)), dtype=np.float32)
    return pd.DataFrame(values, index=series.index, columns=columns)
