"""The zero-shot KD recipes (Rashid et al. 2021, the rows of their Table 1), in the paper's
order, with the label of each one's table column. The one list that the recipe code
(`zskd.py`), the report preset (`report.py`) and the Makefile (`python -m
tdx.distill.recipes`) read."""

RECIPES = {"labels": "(1) task labels", "kd_task": "(2) KD, task data",
           "random": "(3) ZS random tokens", "ood": "(4) ZS out-of-domain",
           "adv_gumbel": "(5) ZS + adv. Gumbel-MLM", "adv_pgd": "(5b) ZS + adv. PGD"}
ZERO_SHOT = ("random", "ood", "adv_gumbel", "adv_pgd")  # never see a task input

if __name__ == "__main__":
    print(",".join(RECIPES))
