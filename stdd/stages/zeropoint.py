"""The photometric zero-point model as plain parameters (JSON), not a pickled closure.

STDPipe's `photometry.match` returns `zero_fn`, a closure over a polynomial in normalised image
coordinates. stdd stores the same model as numbers: the normalisation (x0, y0, scale), the
polynomial order, the coefficients and their covariance, the colour term. `ZeroPointModel` evaluates
it (and its error) anywhere, and `from_match` checks that its evaluation reproduces STDPipe's own
to 1e-9 mag before it is trusted, so the stored model is the fitted model.

Definition: mag = −2.5·log10(ADU in the aperture) + zp(x, y) + color_term · colour, where colour is
the catalogue colour named in `color` (e.g. "g-r"); for an object of unknown colour the colour term is
not applied (the "colour 0" convention). zp is for total ADU in the aperture, not per second.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def _series(x, y, order: int) -> list[np.ndarray]:
    """Terms 1, x, y, x², xy, y², ... in STDPipe's order (photometry_model.make_series)."""
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    out = [np.ones_like(x)]
    for i in range(1, order + 1):
        for j in range(i + 1):
            out.append(x ** (i - j) * y ** j)
    return out


@dataclass
class ZeroPointModel:
    x0: float
    y0: float
    scale: float
    spatial_order: int
    coefficients: list[float]           # the zero-point polynomial (and bg / non-linearity terms)
    covariance: list[list[float]]       # of `coefficients`
    bg_order: int | None = None
    nonlin: bool = False
    color_term: float | None = None
    color_term_err: float | None = None
    color: str | None = None            # e.g. "g-r": the catalogue colour the term multiplies
    intrinsic_rms: float = 0.0
    aperture_pixels: float | None = None
    catalog_band: str | None = None

    def _design(self, x, y, mag=None) -> np.ndarray:
        xn = (np.asarray(x, float) - self.x0) / self.scale
        yn = (np.asarray(y, float) - self.y0) / self.scale
        terms = _series(xn, yn, self.spatial_order)
        if self.bg_order is not None and mag is not None:
            m = np.atleast_1d(np.asarray(mag, float))
            terms += [t * (-2.5 / np.log(10) / 10 ** (-0.4 * m)) for t in _series(xn, yn, self.bg_order)]
        if self.nonlin and mag is not None:
            terms.append(np.atleast_1d(np.asarray(mag, float)) * np.ones_like(xn))
        return np.vstack(terms).T

    def zp(self, x, y, mag=None) -> np.ndarray:
        """Zero point (without the colour term) at pixel positions (0-based)."""
        X = self._design(x, y, mag)
        return X @ np.asarray(self.coefficients[: X.shape[1]])

    def zp_err(self, x, y, mag=None) -> np.ndarray:
        X = self._design(x, y, mag)
        cov = np.asarray(self.covariance)[: X.shape[1], : X.shape[1]]
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", X, cov, X), 0.0))

    def calibrate(self, x, y, mag, color=None) -> np.ndarray:
        """Calibrated magnitudes of instrumental `mag` (−2.5 log10 ADU); colour applied where finite."""
        out = np.asarray(mag, float) + self.zp(x, y, mag)
        if self.color_term is not None and color is not None:
            c = np.asarray(color, float)
            out = out + np.where(np.isfinite(c), self.color_term * c, 0.0)
        return out

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ZeroPointModel":
        return cls(**data)

    @classmethod
    def from_match(cls, m: dict, *, spatial_order: int, bg_order, nonlin: bool, color: str | None,
                   aperture_pixels: float | None = None, catalog_band: str | None = None) -> "ZeroPointModel":
        """From the dict STDPipe's photometry.match returns; verified against its zero_fn."""
        ox, oy = np.asarray(m["ox"], float), np.asarray(m["oy"], float)
        x0 = float(np.nanmean(ox)) if np.any(np.isfinite(ox)) else 0.0
        y0 = float(np.nanmean(oy)) if np.any(np.isfinite(oy)) else 0.0
        fin = np.isfinite(ox) & np.isfinite(oy)
        scale = max(float(np.nanmax(np.abs(ox[fin] - x0))) if fin.any() else 1.0,
                    float(np.nanmax(np.abs(oy[fin] - y0))) if fin.any() else 1.0, 1.0)
        params = np.asarray(m["params"], float)
        ct = m.get("color_term")
        cte = m.get("color_term_err")
        n_color = 1 if ct is not None and m.get("color_term_err") is not None else 0
        n_zero = len(params) - n_color
        # covariance of the fit, reconstructed from the model errors is not exposed; recompute from zero_fn
        model = cls(x0=x0, y0=y0, scale=scale, spatial_order=int(spatial_order),
                    coefficients=[float(v) for v in params[:n_zero]], covariance=[],
                    bg_order=bg_order, nonlin=bool(nonlin),
                    color_term=float(ct) if ct is not None and np.isscalar(ct) else None,
                    color_term_err=float(cte) if cte is not None and np.isscalar(cte) else None,
                    color=color if ct is not None else None,
                    intrinsic_rms=float(m.get("intrinsic_rms") or 0.0),
                    aperture_pixels=aperture_pixels, catalog_band=catalog_band)
        model.covariance = _covariance_from(m, model, n_zero)
        # the stored model must reproduce STDPipe's
        xs = np.concatenate([ox[fin][:50], [x0, x0 + scale, x0 - scale]])
        ys = np.concatenate([oy[fin][:50], [y0, y0 - scale, y0 + scale]])
        mags = np.concatenate([np.asarray(m["omag"], float)[fin][:50], [-10.0, -8.0, -12.0]])
        ref = m["zero_fn"](xs, ys, mags)
        mine = model.zp(xs, ys, mags)
        good = np.isfinite(ref)
        if not np.allclose(ref[good], mine[good], atol=1e-9, rtol=0):
            raise ValueError("the stored zero-point model does not reproduce STDPipe's "
                             f"(max difference {np.nanmax(np.abs(ref - mine)):.3g} mag)")
        return model


def _covariance_from(m: dict, model: ZeroPointModel, n: int) -> list[list[float]]:
    """Recover the coefficients' covariance from zero_fn's errors (it exposes only evaluations).

    The error is sqrt(XᵀΣX) for a design vector X; with n coefficients, the n(n+1)/2 independent
    entries of Σ follow from enough evaluations by linear least squares.
    """
    rng = np.random.default_rng(0)
    k = n * (n + 1) // 2
    npts = max(3 * k, 30)
    xs = model.x0 + model.scale * rng.uniform(-1, 1, npts)
    ys = model.y0 + model.scale * rng.uniform(-1, 1, npts)
    mags = rng.uniform(-14, -6, npts)
    err = np.asarray(m["zero_fn"](xs, ys, mags, get_err=True), float)
    X = model._design(xs, ys, mags)[:, :n]
    iu = np.triu_indices(n)
    A = np.stack([X[:, i] * X[:, j] * (1 if i == j else 2) for i, j in zip(*iu)], axis=1)
    sol, *_ = np.linalg.lstsq(A, err ** 2, rcond=None)
    cov = np.zeros((n, n))
    cov[iu] = sol
    cov = cov + cov.T - np.diag(np.diag(cov))
    return [[float(v) for v in row] for row in cov]
