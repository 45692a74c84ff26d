"""svgplot.py - small line/scatter plots written as SVG, no dependencies.

A Figure holds panels laid out on a grid; a Panel has linear or log axes with
"nice" ticks, series drawn as lines and/or markers with optional error bars
(y_lo, y_hi), and a legend. Enough for the paper's figures, nothing more.
"""
import math
from xml.sax.saxutils import escape

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
           "#e377c2", "#7f7f7f", "#17becf", "#bcbd22"]
MARKERS = ["circle", "square", "triangle", "diamond", "cross"]


def _nice(x, round_):
    e = math.floor(math.log10(x))
    f = x / 10 ** e
    if round_:
        nf = 1 if f < 1.5 else 2 if f < 3 else 5 if f < 7 else 10
    else:
        nf = 1 if f <= 1 else 2 if f <= 2 else 5 if f <= 5 else 10
    return nf * 10 ** e


def linear_ticks(lo, hi, n=5):
    if hi <= lo:
        hi = lo + (abs(lo) if lo else 1.0)
    step = _nice(_nice(hi - lo, False) / (n - 1), True)
    t0 = math.floor(lo / step) * step
    t1 = math.ceil(hi / step) * step
    ticks, t = [], t0
    while t <= t1 + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return t0, t1, ticks


def log_ticks(lo, hi):
    lo, hi = max(lo, 1e-12), max(hi, 1e-12)
    e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if e1 == e0:
        e1 += 1
    mults = [1, 2, 5] if e1 - e0 <= 3 else [1]
    ticks = [m * 10 ** e for e in range(e0, e1 + 1) for m in mults]
    ticks = [t for t in ticks if lo / 1.0001 <= t <= hi * 1.0001]
    a = max([t for t in [m * 10 ** e for e in range(e0 - 1, e1 + 1) for m in mults] if t <= lo] or [10 ** e0])
    b = min([t for t in [m * 10 ** e for e in range(e0, e1 + 2) for m in mults] if t >= hi] or [10 ** e1])
    ticks = sorted(set([a] + ticks + [b]))
    return a, b, ticks


def fmt_tick(t):
    if t == 0:
        return "0"
    a = abs(t)
    if a >= 1e4 or a < 1e-3:
        return "%.0e" % t
    if a >= 100:
        return "%d" % round(t)
    s = ("%.3f" % t).rstrip("0").rstrip(".")
    return s


class Panel:
    def __init__(self, title="", xlabel="", ylabel="", xlog=False, ylog=False,
                 xticks=None, legend="upper right", ylim=None, xlim=None, yticks=None):
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.xlog, self.ylog = xlog, ylog
        self.xticks, self.yticks = xticks, yticks
        self.legend = legend
        self.ylim, self.xlim = ylim, xlim
        self.series = []

    def add(self, label, xs, ys, lo=None, hi=None, color=None, marker=None, line=True,
            dash=None):
        i = len(self.series)
        self.series.append(dict(label=label, xs=list(xs), ys=list(ys),
                                lo=list(lo) if lo is not None else None,
                                hi=list(hi) if hi is not None else None,
                                color=color or PALETTE[i % len(PALETTE)],
                                marker=marker if marker is not None else MARKERS[i % len(MARKERS)],
                                line=line, dash=dash))

    def _range(self, axis):
        vals = []
        for s in self.series:
            if axis == "x":
                vals += s["xs"]
            else:
                vals += s["ys"] + (s["lo"] or []) + (s["hi"] or [])
        vals = [v for v in vals if v is not None and math.isfinite(v)]
        log = self.xlog if axis == "x" else self.ylog
        if log:
            vals = [v for v in vals if v > 0]
        if not vals:
            return 0.0, 1.0
        return min(vals), max(vals)

    def render(self, ox, oy, w, h):
        out = []
        ml, mr, mt, mb = 62, 12, 26, 44
        pw, ph = w - ml - mr, h - mt - mb
        x0, y0 = ox + ml, oy + mt
        xlo, xhi = self.xlim or self._range("x")
        ylo, yhi = self.ylim or self._range("y")
        if self.xlog:
            xa, xb, xt = log_ticks(xlo, xhi)
        else:
            xa, xb, xt = linear_ticks(xlo, xhi)
        if self.xticks:
            xt = self.xticks
            if self.xlog:
                xa, xb = min(xt + [xlo]) / 1.25, max(xt + [xhi]) * 1.25
            else:
                pad = (max(xt) - min(xt)) * 0.05 or 1
                xa, xb = min(xt + [xlo]) - pad, max(xt + [xhi]) + pad
        if self.ylog:
            ya, yb, yt = log_ticks(ylo, yhi)
        else:
            ya, yb, yt = linear_ticks(ylo, yhi)
        if self.yticks:
            yt = self.yticks
            ya, yb = self.ylim or (min(yt), max(yt))
        tx = (lambda v: math.log10(v)) if self.xlog else (lambda v: v)
        ty = (lambda v: math.log10(v)) if self.ylog else (lambda v: v)
        X = lambda v: x0 + (tx(v) - tx(xa)) / ((tx(xb) - tx(xa)) or 1) * pw
        Y = lambda v: y0 + ph - (ty(v) - ty(ya)) / ((ty(yb) - ty(ya)) or 1) * ph
        out.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="white" '
                   'stroke="#333" stroke-width="1"/>' % (x0, y0, pw, ph))
        for t in xt:
            if xa <= t <= xb or self.xticks:
                px = X(t)
                out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>'
                           % (px, y0, px, y0 + ph))
                out.append('<text x="%.1f" y="%.1f" font-size="10" text-anchor="middle">%s</text>'
                           % (px, y0 + ph + 13, fmt_tick(t)))
        for t in yt:
            py = Y(t)
            out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>'
                       % (x0, py, x0 + pw, py))
            out.append('<text x="%.1f" y="%.1f" font-size="10" text-anchor="end">%s</text>'
                       % (x0 - 4, py + 3.5, fmt_tick(t)))
        out.append('<text x="%.1f" y="%.1f" font-size="12" text-anchor="middle">%s</text>'
                   % (x0 + pw / 2, y0 + ph + 32, escape(self.xlabel)))
        out.append('<text x="%.1f" y="%.1f" font-size="12" text-anchor="middle" '
                   'transform="rotate(-90 %.1f %.1f)">%s</text>'
                   % (ox + 14, y0 + ph / 2, ox + 14, y0 + ph / 2, escape(self.ylabel)))
        out.append('<text x="%.1f" y="%.1f" font-size="13" font-weight="bold" '
                   'text-anchor="middle">%s</text>' % (x0 + pw / 2, oy + 17, escape(self.title)))
        out.append('<clipPath id="c%d_%d"><rect x="%.1f" y="%.1f" width="%.1f" height="%.1f"/>'
                   '</clipPath><g clip-path="url(#c%d_%d)">'
                   % (ox, oy, x0, y0, pw, ph, ox, oy))
        for s in self.series:
            pts = [(X(x), Y(y)) for x, y in zip(s["xs"], s["ys"])
                   if y is not None and (not self.xlog or x > 0) and (not self.ylog or y > 0)]
            dash = ' stroke-dasharray="%s"' % s["dash"] if s["dash"] else ""
            if s["line"] and len(pts) > 1:
                out.append('<polyline fill="none" stroke="%s" stroke-width="1.6"%s points="%s"/>'
                           % (s["color"], dash, " ".join("%.1f,%.1f" % p for p in pts)))
            if s["lo"] is not None:
                for x, lo, hi in zip(s["xs"], s["lo"], s["hi"]):
                    if self.ylog and lo <= 0:
                        continue
                    px = X(x)
                    out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"/>'
                               % (px, Y(lo), px, Y(hi), s["color"]))
                    for yy in (lo, hi):
                        out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"/>'
                                   % (px - 3, Y(yy), px + 3, Y(yy), s["color"]))
            if s["marker"]:
                for px, py in pts:
                    out.append(_marker(s["marker"], px, py, s["color"]))
        out.append("</g>")
        # legend
        shown = [s for s in self.series if s["label"]]
        if self.legend and shown:
            lw = max(len(s["label"]) for s in shown) * 6.2 + 34
            lh = 15 * len(shown) + 6
            lx = x0 + pw - lw - 6 if "right" in self.legend else x0 + 6
            ly = y0 + 6 if "upper" in self.legend else y0 + ph - lh - 6
            out.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="white" '
                       'fill-opacity="0.85" stroke="#999"/>' % (lx, ly, lw, lh))
            for i, s in enumerate(shown):
                yy = ly + 13 + 15 * i
                dash = ' stroke-dasharray="%s"' % s["dash"] if s["dash"] else ""
                if s["line"]:
                    out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" '
                               'stroke-width="1.6"%s/>' % (lx + 4, yy - 4, lx + 24, yy - 4,
                                                           s["color"], dash))
                if s["marker"]:
                    out.append(_marker(s["marker"], lx + 14, yy - 4, s["color"]))
                out.append('<text x="%.1f" y="%.1f" font-size="10.5">%s</text>'
                           % (lx + 29, yy, escape(s["label"])))
        return out


def _marker(kind, x, y, c):
    r = 3.2
    if kind == "circle":
        return '<circle cx="%.1f" cy="%.1f" r="%.1f" fill="%s"/>' % (x, y, r, c)
    if kind == "square":
        return '<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>' % (
            x - r, y - r, 2 * r, 2 * r, c)
    if kind == "triangle":
        return '<polygon points="%.1f,%.1f %.1f,%.1f %.1f,%.1f" fill="%s"/>' % (
            x, y - r * 1.2, x - r * 1.1, y + r, x + r * 1.1, y + r, c)
    if kind == "diamond":
        return '<polygon points="%.1f,%.1f %.1f,%.1f %.1f,%.1f %.1f,%.1f" fill="%s"/>' % (
            x, y - r * 1.3, x + r, y, x, y + r * 1.3, x - r, y, c)
    return ('<path d="M%.1f %.1fL%.1f %.1fM%.1f %.1fL%.1f %.1f" stroke="%s" stroke-width="2"/>'
            % (x - r, y - r, x + r, y + r, x - r, y + r, x + r, y - r, c))


class Figure:
    def __init__(self, panels, cols, panel_w=380, panel_h=290, title=None, note=None):
        self.panels, self.cols = panels, cols
        self.pw, self.ph = panel_w, panel_h
        self.title, self.note = title, note

    def svg(self):
        rows = (len(self.panels) + self.cols - 1) // self.cols
        top = 26 if self.title else 0
        bottom = 18 if self.note else 0
        W, H = self.cols * self.pw, rows * self.ph + top + bottom
        out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
               'viewBox="0 0 %d %d" font-family="Helvetica, Arial, sans-serif">' % (W, H, W, H),
               '<rect width="100%" height="100%" fill="white"/>']
        if self.title:
            out.append('<text x="%d" y="18" font-size="15" font-weight="bold" '
                       'text-anchor="middle">%s</text>' % (W // 2, escape(self.title)))
        for i, p in enumerate(self.panels):
            r, c = divmod(i, self.cols)
            out += p.render(c * self.pw, top + r * self.ph, self.pw, self.ph)
        if self.note:
            out.append('<text x="6" y="%d" font-size="10" fill="#555">%s</text>'
                       % (H - 5, escape(self.note)))
        out.append("</svg>")
        return "\n".join(out) + "\n"

    def save(self, path):
        with open(path, "w") as f:
            f.write(self.svg())
