"""bench/claims.py's tables: one concept's claims as headline figures, their mean over
concepts, and the printed and markdown tables (the docs' results pages are made from these,
never typed)."""

from __future__ import annotations

from dbdpo.across_concepts import format_se


def headline(result: dict, seed: int) -> dict[str, float]:
    """One concept's claims as numbers (a run's result, `seed` its finetune.seed): (a) the
    held-out IS gain over the base model and the no-context one; per prompt set, (b) the
    final round's IS, TS and S_0.5, (c) the margins of lambda=0 over 1 on IS and of 1 over 0
    on TS, (d) the angle and threshold filters' S_0.5, (e) one round of rounds x N's S_0.5."""
    table, final = result["table"], f"lambda=0.5 angle, round {result['rounds']}"
    out = {"a IS": result["dreambooth_seeds"][seed]["IS"],
           "a own-prompt IS": result["dreambooth_seeds"][seed]["own_prompt_IS"]}
    for where in ("held-out", "held-in"):
        low, high = table["lambda=0 angle, round 1"][where], table["lambda=1 angle, round 1"][where]
        out |= {f"b {where} IS": table[final][where]["IS"], f"b {where} TS": table[final][where]["TS"],
                f"b {where} S_0.5": table[final][where]["S_0.5"],
                f"c {where} IS margin": low["IS"] - high["IS"], f"c {where} TS margin": high["TS"] - low["TS"],
                f"d {where} angle": table["lambda=0.5 angle, round 1"][where]["S_0.5"],
                f"d {where} threshold": table["lambda=0.5 threshold, round 1"][where]["S_0.5"]}
        one_round = f"lambda=0.5 angle, 1 round of {result['rounds']}N"
        if one_round in table:
            out[f"e {where} one round"] = table[one_round][where]["S_0.5"]
    return out


def print_concepts(result: dict) -> None:
    """Per-concept rows of the headline figures, then their mean ± se over concepts."""
    rows, mean = result["headline"], result["mean"]
    keys = [k for k in mean if not k.startswith(("d ", "e "))] + [k for k in mean if k.startswith(("d ", "e "))]
    print(f"claims over {len(rows)} concepts, gains in round_0 stds ({result['minutes']:.1f} min)")
    for start in range(0, len(keys), 6):
        chunk = keys[start:start + 6]
        print(f"{'concept':12s} {'split':5s} | " + " | ".join(f"{k:>20s}" for k in chunk))
        for name, row in rows.items():
            print(f"{name:12s} {result['splits'][name]:5s} | " + " | ".join(f"{row[k]:+20.3f}" for k in chunk))
        print(f"{'mean ± se':18s} | " + " | ".join(f"{mean[k]['mean']:+13.3f} ± {format_se(mean[k]['se'])}" for k in chunk))
        print()


HEADLINE_COLUMNS = {  # the markdown table's columns: headline key -> its header
    "a IS": "(a) IS held-out", "b held-out IS": "(b) IS", "b held-out TS": "(b) TS",
    "b held-out S_0.5": "(b) S_0.5 held-out", "b held-in S_0.5": "(b) S_0.5 held-in",
    "c held-out IS margin": "(c) IS margin held-out", "c held-out TS margin": "(c) TS margin held-out",
    "c held-in IS margin": "(c) IS margin held-in", "c held-in TS margin": "(c) TS margin held-in",
    "d held-out angle": "(d) angle", "d held-out threshold": "(d) threshold",
    "e held-out one round": "(e) one round of 2N",
}


def concepts_markdown(result: dict, command: str) -> str:
    """The per-concept rows and the mean ± se over concepts as a markdown table, for the docs'
    results pages (generated, never typed): held-out figures unless a header says held-in."""
    rows, mean = result["headline"], result["mean"]
    keys = [k for k in HEADLINE_COLUMNS if k in mean]
    lines = [f"Gains in round_0 stds (claim (a): round_0 over the base model), `{command}` "
             f"({len(rows)} concepts).", "",
             "| concept | split | " + " | ".join(HEADLINE_COLUMNS[k] for k in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for name, row in rows.items():
        lines.append(f"| {name} | {result['splits'][name]} | " + " | ".join(f"{row[k]:+.3f}" for k in keys) + " |")
    lines.append("| **mean ± se** | | " + " | ".join(f"**{mean[k]['mean']:+.3f}** ± {format_se(mean[k]['se'])}"
                                                   for k in keys) + " |")
    return "\n".join(lines) + "\n"


def print_table(result: dict) -> None:
    print(f"gains over round_0 in round_0 stds (N={result['N']} prompts x K={result['K']} a round; "
          f"{result['minutes']:.1f} min)")
    print_gains(result["table"], "model", 36)
    seeds = result["dreambooth_seeds"]
    print("claim (a), held-out IS (TS) over the base model by finetune.seed: " + ", ".join(
        f"{seed}: {g['IS']:+.3f}±{g['IS_se']:.3f} ({g['TS']:+.3f})" for seed, g in seeds.items())
        + f"; mean IS {sum(g['IS'] for g in seeds.values()) / len(seeds):+.3f}")
    print("  the same on DreamBooth's own prompt, no context (instance over class prompt): " + ", ".join(
        f"{seed}: {g['own_prompt_IS']:+.3f}" for seed, g in seeds.items())
        + f"; mean {sum(g['own_prompt_IS'] for g in seeds.values()) / len(seeds):+.3f}")
    final = f"lambda=0.5 angle, round {result['rounds']}"
    for where in ("held-out", "held-in"):
        by_seed = {seed: rows[final][where]["S_0.5"] for seed, rows in result["dpo_seeds"].items()}
        print(f"claim (b), {where} S_0.5 after round {result['rounds']} by dpo.seed: "
              + ", ".join(f"{seed}: {s:+.3f}" for seed, s in by_seed.items())
              + f"; mean {sum(by_seed.values()) / len(by_seed):+.3f}")
        margins = {seed: (rows["lambda=0 angle, round 1"][where]["IS"] - rows["lambda=1 angle, round 1"][where]["IS"],
                          rows["lambda=1 angle, round 1"][where]["TS"] - rows["lambda=0 angle, round 1"][where]["TS"])
                   for seed, rows in result["dpo_seeds"].items()}
        print(f"claim (c), {where}, IS (lambda=0 over 1) and TS (lambda=1 over 0) margins by dpo.seed: "
              + ", ".join(f"{seed}: {m[0]:+.3f} {m[1]:+.3f}" for seed, m in margins.items()))
        print(f"claim (d), {where} S_0.5, angle (threshold) filter by dpo.seed: " + ", ".join(
            f"{seed}: {rows['lambda=0.5 angle, round 1'][where]['S_0.5']:+.3f} "
            f"({rows['lambda=0.5 threshold, round 1'][where]['S_0.5']:+.3f})"
            for seed, rows in result["dpo_seeds"].items()))


def print_gains(table: dict, first_column: str, width: int) -> None:
    """One row per model: its held-out and held-in gains (the `paired_gains` of each prompt set)."""
    print(f"{first_column:{width}s} | {'held-out IS':>11s} {'TS':>6s} {'S_0.5 ± se':>13s} | "
          f"{'held-in IS':>10s} {'TS':>6s} {'S_0.5 ± se':>13s}")
    for name, sets in table.items():
        o, i = sets["held-out"], sets["held-in"]
        print(f"{name:{width}s} | {o['IS']:+11.3f} {o['TS']:+6.3f} {o['S_0.5']:+7.3f}±{o['S_0.5_se']:.3f} | "
              f"{i['IS']:+10.3f} {i['TS']:+6.3f} {i['S_0.5']:+7.3f}±{i['S_0.5_se']:.3f}")
