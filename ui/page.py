"""Pieces every page shares: the config and model, the run for the sidebar's settings with its header
(`ui.run_view`), notes on a trace and the KVCrush units of a layer."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

import kvcrush
from ui import runs, shell
from ui.run_view import RunSlots, run_header
from ui.runs import LiveRun
from ui.state import AppConfig
from ui.unit_view import unit_view


@dataclass
class SinglePage:
    """What a single-run page starts from: the sidebar's config and model, its run (`ui.runs.LiveRun`), the
    prompt's gold answers and the header slots the run's summary and answer go into."""

    config: AppConfig
    lm: kvcrush.LoadedModel
    live: LiveRun
    answers: tuple[str, ...]
    slots: RunSlots

    def finish(self):
        """Stream the rest of the answer into its box at the top (`ui.runs.finish`); the finished record."""
        return runs.finish(self.lm, self.live, self.slots, self.answers)


def single_run(title: str) -> SinglePage:
    """The title, then the run for the sidebar's settings and its header; stops the page when there is none."""
    st.title(title)
    config, lm = context()
    live = runs.current_run(config, lm)
    if live is None:
        st.stop()
    answers = config.prompt.answers if config.prompt else ()
    return SinglePage(config, lm, live, answers, run_header(live, answers))


def context() -> tuple[AppConfig, kvcrush.LoadedModel]:
    """This rerun's config and model (built by app.py, or here when a page runs on its own)."""
    return shell.take()


def trace_notes(trace: kvcrush.RunTrace) -> str:
    parts = [f"{trace.n_context:,} tokens under the budget"]
    if trace.n_question:
        if trace.query_aware:
            parts.append(f"the last {trace.n_question} are the question (the observation window, always kept)")
        else:
            parts.append(f"{trace.n_question} question tokens appended after compression (not shown)")
    return " · ".join(parts)


def kvcrush_view(trace: kvcrush.RunTrace, layer, policy_label: str, what: str):
    """The layer's KVCrush units (`ui.unit_view.unit_view`), or None after saying why there are none to show."""
    view = unit_view(trace, layer)
    if view is None:
        reason = ("this layer kept everything (the budget covers the prompt)" if layer.no_op
                  else f"the policy is {policy_label}; {what} are recorded by KVCrush runs")
        st.info(f"No {what} to show: {reason}. Pick **kvcrush** as the policy in the sidebar.")
    return view
