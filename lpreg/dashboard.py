"""The W&B dashboard of entropy collapse, as code: one command creates (or overwrites) a saved workspace view.

    python -m lpreg.dashboard ENTITY/PROJECT [--group G] [--name NAME] [--report]

Runs are grouped by regularizer (the W&B job type, set by ``lpreg/harness/tracking.py``); each line panel shows the mean
over seeds with a min-max band against ``train/step``. Sections and their metrics come from ``SECTIONS`` in
``lpreg/core/metrics.py`` (one place), in that order. Templated names (``eval/<source>/pass@k``, ``timing/<phase>``,
``sparks/<name>/prob``) become regex panels that pick up every matching key. Per-step series use W&B's running
average over ``metrics.SMOOTHING_POINTS`` points, like ``analysis/plots.py``'s rolling mean over the same number of
points; evaluations are not smoothed. One difference: W&B's running-average window is centred, the figures' window
is trailing.

``--name`` names the saved view; running the command again finds the view of that name and overwrites it (no
duplicates). ``--report`` also saves a W&B Report with the same sections and a short text on how to read each one
(overwritten by title in the same way). Needs the optional extra ``pip install -e '.[dashboard]'``, network, and a W&B
API key (``wandb login``). Offline runs must be synced first (``wandb sync <multirun>/*/wandb/offline-run-*``).
"""

from __future__ import annotations

import argparse
import socket
import sys
from urllib.parse import urlparse

from lpreg.core.metrics import METRICS, SECTIONS, is_template, metric_regex, smoothing_points

X_AXIS = "train/step"  # every series is logged against it (tracking.py: define_metric("*", step_metric=...))
GROUP_BY = "JobType"  # W&B run attribute; run.py sets job_type = the arm (the regularizer unless `arm=` names it)
BAND = "minmax"  # band over seeds: with 2-3 seeds a standard-error band would understate the spread
TABLES = ("samples",)  # METRICS names logged as wandb.Table (tracking.py log_table)
HISTOGRAMS = ("policy/sampled_prob_hist",)  # METRICS names logged as wandb.Histogram (tracking.py log_histogram)
DEFAULT_NAME = "lpreg: entropy collapse"
CONNECT_TIMEOUT_S = 10.0  # seconds for the reachability check; a reachable server answers in well under 1 s
API_TIMEOUT_S = 30  # wandb.Api HTTP timeout per request

# How to read each section (the report's text, and the HTML twin's captions).
READING = {
    "Entropy collapse": "Entropy collapse is the falling policy entropy together with fewer low-probability "
                        "sampled tokens and less tail mass. Lp-Reg should keep the low-probability share and the "
                        "tail mass above plain GRPO's while its accuracy keeps rising.",
    "Accuracy": "Held-out accuracy per data source (greedy, avg@k and unbiased pass@k) and its mean; pass@k falling "
                "while avg@k rises is the narrowing that collapse brings. Training reward is on the rollout batch.",
    "Lp-Reg internals": "δ is the selection threshold (the largest π_θ(y) among selected low-probability negative "
                        "tokens); candidates and regularized are token counts per mini-batch, their ratio is the "
                        "share the proxy protects; div_mean is the mean divergence on those tokens; noise_frac the "
                        "share of candidates the min-p filter treats as noise. Flat at zero means the regularizer is "
                        "inactive.",
    "Optimization": "Loss parts, the k3 KL to the rollout policy and the PPO clip fraction (off-policy drift), "
                    "gradient norm before clipping, learning rate, skipped steps, and the rollout's shape (groups "
                    "with no signal, response length, truncated responses).",
    "Sparks": "On a task with a decision point (task=spark): the spark's probability at it, how many rollouts open "
              "with the spark, the accuracy of each mode, how often spark rollouts get a negative advantage, and the "
              "share of the tokens the regularizer acts on that are the spark. A falling spark probability under "
              "GRPO is the collapse the testbed is built to show; the control arm's floor is active where it lifts.",
    "Samples": "The latest table of sample completions with their sampled-token probabilities, the tokens the "
               "regularizer acted on, the histograms of sampled-token probabilities over training (linear: mass "
               "piling up near 1 is collapse; log-spaced by advantage sign: which tail the updates act on), and the "
               "mean probability of configured token sets.",
    "Speed": "Seconds per trainer phase and tokens per second; compare arms at equal cost.",
}


def _line(name: str, group: bool = True):
    """One line panel for the METRICS name ``name`` (a regex panel when it is a template)."""
    import wandb_workspaces.reports.v2 as wr

    if name not in METRICS:
        raise KeyError(f"{name!r} is not a metric name in lpreg/core/metrics.py METRICS; add it there with a definition")
    smooth = smoothing_points(name) if group else 1
    kw = dict(title=name, x=X_AXIS)
    kw |= dict(metric_regex=metric_regex(name)) if is_template(name) else dict(y=[name])
    if group:
        kw |= dict(groupby=GROUP_BY, groupby_aggfunc="mean", groupby_rangefunc=BAND)
    if smooth > 1:
        kw |= dict(smoothing_type="average", smoothing_factor=float(smooth))
    return wr.LinePlot(**kw)


def panel(name: str):
    """The panel of one METRICS name: a table panel for tables, an ungrouped line panel for histograms (W&B draws a
    histogram series as a heat map over steps; a mean over seeds is not defined for it), else a grouped line panel."""
    import wandb_workspaces.reports.v2 as wr

    if name in TABLES:
        return wr.WeavePanelSummaryTable(table_name=name, layout=wr.Layout(w=24, h=10))
    return _line(name, group=name not in HISTOGRAMS)


def panels(section: str) -> list:
    return [panel(name) for name in SECTIONS[section]]


def build_workspace(entity: str, project: str, name: str = DEFAULT_NAME, group: str | None = None):
    """The ``wandb_workspaces`` Workspace object (not saved): sections of ``SECTIONS`` in order, runs grouped by
    regularizer, optionally only the runs of W&B group ``group`` (a multirun or a study)."""
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    return ws.Workspace(
        entity=entity, project=project, name=name,
        sections=[ws.Section(name=s, panels=panels(s), is_open=True,
                             layout_settings=ws.SectionLayoutSettings(columns=4 if i == 0 else 3, rows=1 if i == 0 else 2))
                  for i, s in enumerate(SECTIONS)],
        settings=ws.WorkspaceSettings(x_axis=X_AXIS),
        runset_settings=ws.RunsetSettings(groupby=[expr.Metric(GROUP_BY)],
                                          filters=[expr.Metric("Group") == group] if group else ""),
    )


def build_report(entity: str, project: str, title: str = DEFAULT_NAME, group: str | None = None):
    """A ``wandb_workspaces`` Report (not saved) with the same sections, each a heading, how to read it, and its
    panels over the same grouped run set."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    def runset():
        return wr.Runset(entity=entity, project=project, name=group or "all runs", groupby=["run.jobType"],
                         filters=[expr.Metric("Group") == group] if group else "")

    intro = ("One line per regularizer: the mean over seeds with a min-max band, against training step "
             f"(rollout batches). Per-step series are running averages over {smoothing_points('policy/entropy')} "
             "points; evaluations are not smoothed. Generated by `python -m lpreg.dashboard`.")
    blocks = [wr.P(intro)]
    for s in SECTIONS:
        blocks += [wr.H2(s), wr.P(READING[s]), wr.PanelGrid(runsets=[runset()], panels=panels(s))]
    return wr.Report(entity=entity, project=project, title=title, description="Lp-Reg ablation: entropy collapse",
                     blocks=blocks)


def wandb_base_url() -> str:
    """The W&B server URL the API would use (``WANDB_BASE_URL``, else ``wandb login --host``, else the cloud)."""
    from wandb import env
    from wandb.sdk import wandb_setup

    return env.get_base_url(wandb_setup.singleton().settings.base_url).rstrip("/")


def check_reachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Open one TCP connection to the server of ``url``, so that no network fails in seconds instead of after the
    W&B client's retries. Raises ``ConnectionError`` with what to do."""
    u = urlparse(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        socket.create_connection((u.hostname, port), timeout=timeout).close()
    except OSError as err:
        raise ConnectionError(
            f"cannot reach the W&B server {url} ({err}). Check the network, or WANDB_BASE_URL / `wandb login "
            "--host` for a self-hosted server. Without W&B, `python analysis/plots.py <multirun> --dashboard` writes "
            "the same view as an HTML page.") from err


def find_view(entity: str, project: str, display_name: str, execute) -> tuple[str, str] | None:
    """``(internal name, id)`` of the saved workspace view named ``display_name``, or None.

    ``execute(query, variables) -> dict`` runs a GraphQL query (the library's ``execute_graphql`` bound to an API).
    """
    query = """
        query Views($entityName: String, $name: String, $viewType: String = "project-view") {
            project(name: $name, entityName: $entityName) {
                allViews(viewType: $viewType) { edges { node { id name displayName } } }
            }
        }"""
    resp = execute(query, {"entityName": entity, "name": project, "viewType": "project-view"})
    if resp.get("project") is None:
        raise ValueError(f"W&B project {entity}/{project} not found, or this API key has no access to it")
    nodes = [e["node"] for e in resp["project"]["allViews"]["edges"]]
    match = [n for n in nodes if n.get("displayName") == display_name]
    return (match[0]["name"], match[0]["id"]) if match else None


def save_workspace(workspace, api) -> str:
    """Save ``workspace``, overwriting the view of the same name if one exists; returns its URL."""
    from wandb_workspaces._graphql import execute_graphql

    found = find_view(workspace.entity, workspace.project, workspace.name, lambda q, v: execute_graphql(api, q, v))
    if found:  # upsert by id: the same view is overwritten
        object.__setattr__(workspace, "_internal_name", found[0])
        object.__setattr__(workspace, "_internal_id", found[1])
    workspace.save()
    return workspace.url


def save_report(report, api) -> str:
    """Save ``report``, overwriting the report of the same title in the project if one exists; returns its URL."""
    same = [r for r in api.reports(f"{report.entity}/{report.project}") if r.display_name == report.title]
    if same:
        report.id = same[0].id
    report.save()
    return report.url


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", metavar="ENTITY/PROJECT")
    ap.add_argument("--group", help="only the runs of this W&B group (a multirun folder date/time or a study name)")
    ap.add_argument("--name", default=DEFAULT_NAME, help=f"name of the saved view (default: {DEFAULT_NAME!r})")
    ap.add_argument("--report", action="store_true", help="also save a W&B Report with the same sections")
    args = ap.parse_args(argv)
    if args.path.count("/") != 1 or not all(args.path.split("/")):
        ap.error(f"{args.path!r}: give ENTITY/PROJECT, e.g. my-team/lpreg")
    entity, project = args.path.split("/")
    try:
        import wandb_workspaces  # noqa: F401
    except ImportError:
        print("error: the W&B dashboard needs wandb-workspaces: pip install -e '.[dashboard]'", file=sys.stderr)
        return 2
    import wandb

    workspace = build_workspace(entity, project, args.name, args.group)
    report = build_report(entity, project, args.name, args.group) if args.report else None
    try:
        check_reachable(wandb_base_url())
        api = wandb.Api(timeout=API_TIMEOUT_S)
        print(f"workspace: {save_workspace(workspace, api)}")
        if report is not None:
            print(f"report: {save_report(report, api)}")
    except (ConnectionError, ValueError, wandb.errors.CommError, wandb.errors.AuthenticationError,
            wandb.errors.UsageError) as err:  # no server, no project, no or a bad API key
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
