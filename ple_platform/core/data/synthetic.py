"""Deterministic synthetic *panel*: N customers x M monthly snapshots, streamed month by month.

Layout written under ``out_dir`` (the landing zone the raw assets read)::

    customers/month=YYYY-MM-01.parquet      one row per customer present that month
    holdings/month=YYYY-MM-01.parquet       the 24 products as 0/1
    transactions/month=YYYY-MM-01.parquet   card transactions of that month, sorted by (customer_id, ts)
    ground_truth/month=YYYY-MM-01.parquet   persona, latents, intents, life event (benchmarks only)
    manifest.json                           config, per-file rows + sha256, totals, measured rates

Every file matches ``TABLE_SCHEMAS`` exactly.

Determinism. The content is a pure function of ``SyntheticConfig`` (and the pinned numpy/pyarrow versions):
customers are processed in chunks of ``chunk_size`` and chunk ``c`` of month ``m`` draws from its own stream
``SeedSequence([seed, 1, m, c])`` (initial state: ``[seed, 0, 0, c]``). ``chunk_size`` is therefore part of
the content definition: changing it gives another, statistically identical, panel. Parquet writer options
are pinned and no timestamp enters the files, so a re-run is byte-identical (checked by sha256).

Memory. Customer state lives in O(N) numpy arrays (about 120 bytes per customer); transactions exist only
for one chunk at a time and are written as one row group per chunk.

Model (see ``docs/data.md`` for the datasheet). Six personas with a 5-D latent state (wealth, activity,
risk, digital, loyalty) that follows an AR(1) around a personal mean; life events (salary rise, relocation,
family change) move it. Six latent *intents* switch on with a hazard and decay over a few months. An intent
first changes the month's transactions (MCC mix, amounts, counts) and only from the next month raises the
acquisition hazard of related products: that lag is the leading signal the sequence models should find.
Product acquisition/churn are logistic hazards in observable attributes (age bands, income, segment,
holdings complementarity, tenure, last month's spend), latent state, lagged intents and noise.

Planted mechanisms (``SyntheticConfig.mechanisms``, docs/data.md §4.1) add signal that monthly totals and shares
do not show: a month-end burst after quiet weeks (timing) precedes a loan, restaurant spend moving to grocery
under the same L1 parent (hierarchy) precedes a deposit, and a community peer's acquisition, visible only by
linking customers through shared neighbourhood merchants (graph), raises the odds of the same product, and a
weekly grocery routine that loses its period (cyclic) precedes the loss of a core product. They draw from their
own streams ``SeedSequence([seed, 2, m + 1, c])`` (communities: ``[seed, 2, 0, c]``; cyclic: stream 3), so with
``mechanisms=()`` the customers, holdings and transactions are those of generator v1, byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ple_platform.core.data.schema import (
    CHANNELS,
    CORE_PRODUCTS,
    GENDERS,
    N_PRODUCTS,
    PRODUCT_NAMES,
    PRODUCTS_BY_GROUP,
    SEGMENTS,
    SUITABILITY_PROFILES,
    TABLE_SCHEMAS,
    add_months,
    month_start,
)
from ple_platform.core.data.taxonomy import mcc_hierarchy

GENERATOR_VERSION = "ple-synthetic-panel/2"
TABLES: tuple[str, ...] = ("customers", "holdings", "transactions", "ground_truth")

# ------------------------------------------------------------------------------------------------------------
# Model constants. Numbers follow the reference generator (personas, latent means, rates) where it had them;
# the rest are hand-set so that the measured base rates land in the ranges stated in docs/data.md.
# ------------------------------------------------------------------------------------------------------------

PERSONAS = ("conservative_saver", "active_spender", "young_digital", "high_value", "occasional_user", "diversified")
PERSONA_WEIGHTS = np.array([0.3605, 0.2806, 0.1037, 0.1401, 0.0555, 0.0596])
PERSONA_WEIGHTS = PERSONA_WEIGHTS / PERSONA_WEIGHTS.sum()
LATENTS = ("wealth", "activity", "risk", "digital", "loyalty")
W, ACT, RISK, DIG, LOY = range(5)
PERSONA_LATENT_MEANS = np.array(
    [
        [0.3, -0.5, -0.8, -0.3, 0.7],
        [0.5, 0.8, 0.3, 0.4, 0.2],
        [-0.2, 0.6, 0.5, 0.9, -0.3],
        [0.9, 0.3, 0.4, 0.2, 0.6],
        [-0.5, -0.8, -0.2, -0.5, -0.4],
        [0.4, 0.5, 0.6, 0.5, 0.4],
    ]
)
POP_LATENT_MEAN = PERSONA_WEIGHTS @ PERSONA_LATENT_MEANS  # latent effects act on deviations from this
LATENT_RHO = 0.85  # monthly AR(1) persistence
LATENT_SD = 0.30  # stationary month-to-month spread around the personal mean
PERSONAL_MEAN_SD = 0.30  # between-customer spread of the personal mean within a persona

INTENTS = ("travel", "housing", "saving", "investing", "family", "digital")
I_TRAVEL, I_HOUSING, I_SAVING, I_INVESTING, I_FAMILY, I_DIGITAL = range(6)
INTENT_DECAY = 0.72  # monthly; an onset at ~0.85 falls below INTENT_FLOOR after ~6 months
INTENT_FLOOR = 0.12

LIFE_EVENTS = ("none", "salary_rise", "relocation", "family_change")
EV_NONE, EV_SALARY, EV_RELOCATION, EV_FAMILY = range(4)

# ~20 Spanish provinces (Santander's `nomprov` spelling), weighted roughly by population.
PROVINCES = (
    "MADRID", "BARCELONA", "VALENCIA", "SEVILLA", "MALAGA", "ALICANTE", "MURCIA", "CADIZ", "BIZKAIA",
    "BALEARS, ILLES", "PALMAS, LAS", "CORUÑA, A", "ASTURIAS", "ZARAGOZA", "PONTEVEDRA",
    "SANTA CRUZ DE TENERIFE", "GRANADA", "TOLEDO", "VALLADOLID", "CANTABRIA",
)  # fmt: skip
PROVINCE_WEIGHTS = np.array([22, 14, 7, 6, 5, 5, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2], dtype=float)
PROVINCE_WEIGHTS /= PROVINCE_WEIGHTS.sum()

# Per persona: age (mean, sd), log-income (mu, sigma), tenure gamma (shape, scale in months),
# segment probabilities (TOP, PARTICULARES, UNIVERSITARIO), monthly transaction rate.
PERSONA_AGE = np.array([[38.5, 11.0], [44.8, 8.0], [30.4, 5.0], [59.7, 13.0], [24.3, 6.0], [34.0, 9.0]])
PERSONA_INCOME = np.array([[10.32, 0.45], [11.1, 0.55], [10.9, 0.40], [11.8, 0.60], [10.35, 0.40], [11.3, 0.55]])
PERSONA_TENURE = np.array([[0.92, 67.7], [3.39, 34.9], [2.2, 21.2], [2.68, 43.0], [1.19, 20.2], [1.98, 19.0]])
PERSONA_SEGMENT = np.array(
    [[0.05, 0.60, 0.15], [0.15, 0.65, 0.10], [0.02, 0.30, 0.60],
     [0.40, 0.45, 0.05], [0.02, 0.40, 0.35], [0.20, 0.55, 0.10]]
)
PERSONA_SEGMENT = PERSONA_SEGMENT / PERSONA_SEGMENT.sum(1, keepdims=True)
PERSONA_TXN_RATE = np.array([12.0, 30.0, 22.0, 18.0, 8.0, 25.0])
PERSONA_INCOME_MISSING = np.array([0.18, 0.16, 0.28, 0.16, 0.40, 0.21])  # persistent part; MNAR by persona
SEG_TOP, SEG_PART, SEG_UNI = range(3)

# Acquisition channel preference: personas favour different codes (young_digital -> online channels).
_CHANNEL_BASE = np.array([10, 8, 6, 5, 4, 3, 3, 2, 2, 2, 1, 1], dtype=float)
_CHANNEL_TILT = {2: {7: 8.0, 9: 6.0}, 3: {1: 3.0, 4: 3.0}, 4: {10: 6.0}, 5: {7: 3.0, 5: 2.0}}

# Hour-of-day profiles: (centre hour, sd, weight) bumps; weekends shift later and flatten.
_HOUR_BUMPS = (
    ((10.0, 2.0, 1.0), (17.0, 2.5, 0.6)),
    ((13.0, 2.0, 0.7), (19.5, 2.5, 1.0)),
    ((14.0, 3.0, 0.6), (21.5, 2.2, 1.0), (1.0, 1.5, 0.3)),
    ((12.0, 2.5, 1.0), (20.0, 2.0, 0.7)),
    ((12.0, 3.0, 1.0),),
    ((11.0, 3.0, 0.8), (18.0, 3.0, 0.8)),
)

# --- transactions: L2 merchant-category mixture ------------------------------------------------------------
_L2_BASE = {
    "grocery": 22, "restaurants": 12, "bars": 4, "general_retail": 6, "apparel": 4, "electronics": 1.5,
    "specialty_retail": 5, "online_retail": 4, "fuel": 6, "transit": 4, "auto_services": 2,
    "telecom_utilities": 4, "health": 3, "personal_services": 2, "professional_services": 0.5,
    "money_transfer": 4, "insurance": 1, "brokerage": 0.2, "digital_media": 2, "recreation": 3, "gambling": 0.5,
    "home_improvement": 1, "furnishings": 0.8, "housing": 0.5, "government_services": 0.8, "schools": 0.5,
    "childcare": 0.3, "airlines": 0.6, "lodging": 0.8, "car_rental": 0.3, "travel_agencies": 0.4,
}  # fmt: skip
_TRAVEL_L2 = ("airlines", "lodging", "car_rental", "travel_agencies")
_L2_PERSONA_MULT = (
    {"grocery": 1.5, "telecom_utilities": 1.5, "health": 1.4, "money_transfer": 1.5, "insurance": 2.0,
     "online_retail": 0.5, "digital_media": 0.4, "bars": 0.5, "gambling": 0.5, **{k: 0.6 for k in _TRAVEL_L2}},
    {"restaurants": 1.5, "bars": 1.6, "apparel": 1.5, "recreation": 1.5, "fuel": 1.3, **{k: 1.3 for k in _TRAVEL_L2}},
    {"digital_media": 4.0, "online_retail": 3.0, "electronics": 2.0, "transit": 1.8, "bars": 1.5, "grocery": 0.7,
     "health": 0.5, "insurance": 0.4},
    {"airlines": 3.0, "lodging": 3.0, "travel_agencies": 2.5, "car_rental": 2.5, "restaurants": 1.5, "brokerage": 5.0,
     "insurance": 2.0, "professional_services": 3.0, "specialty_retail": 1.5},
    {"grocery": 1.6, "money_transfer": 2.0, "fuel": 1.2},
    {"brokerage": 3.0, "recreation": 1.3, "__flatten__": 0.6},
)  # fmt: skip
# Log-effects of latent deviations on the L2 mix (rows: wealth, activity, risk, digital, loyalty).
_L2_LATENT = (
    {"airlines": 0.4, "lodging": 0.4, "travel_agencies": 0.4, "car_rental": 0.4, "restaurants": 0.2,
     "brokerage": 0.6, "professional_services": 0.3, "money_transfer": -0.2, "gambling": -0.2},
    {"recreation": 0.3, "bars": 0.3, "restaurants": 0.2},
    {"gambling": 0.5, "brokerage": 0.4, "insurance": -0.3},
    {"digital_media": 0.6, "online_retail": 0.5, "electronics": 0.2, "money_transfer": -0.3},
    {"grocery": 0.1},
)  # fmt: skip
# What an active intent (level 1) adds to the L2 mix, as multiplier - 1: the transaction footprint.
_L2_INTENT = (
    {"airlines": 9.0, "lodging": 9.0, "travel_agencies": 9.0, "car_rental": 4.0},
    {"furnishings": 8.0, "home_improvement": 8.0, "housing": 10.0},
    {"brokerage": 6.0, "insurance": 4.0},
    {"brokerage": 12.0, "insurance": 3.0},
    {"childcare": 15.0, "schools": 10.0, "general_retail": 1.0, "apparel": 0.5},
    {"digital_media": 5.0, "online_retail": 4.0, "electronics": 2.0},
)
# Log-amount shift of an active intent on its categories (saving/investing move larger sums).
_AMOUNT_INTENT = (
    {k: 0.2 for k in _TRAVEL_L2},
    {"furnishings": 0.3, "home_improvement": 0.3, "housing": 0.3},
    {"brokerage": 0.6, "insurance": 0.4},
    {"brokerage": 0.9, "insurance": 0.3},
    {"childcare": 0.2, "schools": 0.2},
    {},
)
FAV_L2_BOOST = 2.5  # each customer has a favourite category (persistent, switches ~2%/month)
# Lognormal amount (mu, sigma) of log-EUR per L2.
_L2_AMOUNT = {
    "airlines": (5.3, 0.6), "lodging": (4.8, 0.6), "car_rental": (4.7, 0.5), "travel_agencies": (5.5, 0.7),
    "grocery": (3.2, 0.7), "restaurants": (3.2, 0.6), "bars": (2.4, 0.6), "general_retail": (3.4, 0.8),
    "apparel": (3.8, 0.6), "electronics": (4.6, 0.9), "specialty_retail": (3.3, 0.8), "online_retail": (3.5, 0.9),
    "fuel": (3.9, 0.4), "transit": (2.0, 0.7), "auto_services": (3.5, 1.0), "telecom_utilities": (3.8, 0.5),
    "health": (4.0, 0.8), "personal_services": (3.3, 0.6), "professional_services": (5.0, 0.8),
    "money_transfer": (4.5, 0.9), "insurance": (4.8, 0.7), "brokerage": (6.5, 1.0), "digital_media": (2.3, 0.8),
    "recreation": (3.3, 0.8), "gambling": (3.0, 1.0), "home_improvement": (4.2, 0.9), "furnishings": (5.2, 0.9),
    "housing": (5.8, 1.0), "government_services": (4.0, 1.0), "schools": (5.0, 0.8), "childcare": (5.2, 0.5),
}  # fmt: skip
# Within an L2 the code is drawn with fixed weights: generic codes dominate (default weight 1).
_CODE_WEIGHT = {
    4511: 6, 7011: 6, 7512: 3, 4722: 4, 5411: 10, 5812: 6, 5814: 3, 5813: 3, 5310: 3, 5311: 3, 5651: 3, 5732: 3,
    5912: 4, 5999: 4, 5541: 3, 5542: 2, 4111: 3, 4121: 2, 4814: 3, 4900: 3, 8011: 2, 8099: 2, 7230: 3, 6011: 6,
    6300: 3, 5818: 3, 7832: 2, 7999: 2, 5200: 3, 5712: 3, 6513: 3, 9399: 3, 9311: 2, 8299: 2, 8211: 2,
}  # fmt: skip
MERCHANTS_PER_UNIT = 150  # merchant pool of a code ~ its expected share x this (min 20)

# --- products -----------------------------------------------------------------------------------------------
# name: (initial share, monthly churn among holders). Acquisition among non-holders is set so that the share
# is the stationary point: a = c * s / (1 - s); the affinity terms below then tilt both hazards.
_PRODUCT_RATES = {
    "saving": (0.003, 0.010), "guarantee": (0.001, 0.010), "current_account": (0.70, 0.012),
    "derivative": (0.001, 0.020), "payroll_account": (0.08, 0.015), "junior_account": (0.010, 0.006),
    "mas_particular": (0.010, 0.010), "particular_account": (0.13, 0.008), "particular_plus": (0.045, 0.010),
    "short_deposit": (0.010, 0.20), "medium_deposit": (0.010, 0.08), "long_deposit": (0.050, 0.030),
    "e_account": (0.085, 0.010), "funds": (0.030, 0.060), "mortgage": (0.010, 0.010), "pension_plan": (0.015, 0.010),
    "loans": (0.030, 0.100), "taxes": (0.055, 0.040), "credit_card": (0.045, 0.035), "securities": (0.030, 0.060),
    "home_account": (0.004, 0.006), "payroll": (0.055, 0.040), "pensions": (0.03, 0.040), "direct_debit": (0.13, 0.070),
}  # fmt: skip
# Persona multipliers on the holding odds (log taken); unspecified = 1.
_PRODUCT_PERSONA_MULT = (
    {"long_deposit": 2.5, "short_deposit": 2.0, "medium_deposit": 2.0, "saving": 2.0, "pension_plan": 1.5,
     "funds": 0.7, "securities": 0.5, "credit_card": 0.6, "e_account": 0.4, "derivative": 0.3,
     "particular_account": 1.3, "direct_debit": 1.2, "pensions": 1.5},
    {"credit_card": 2.0, "direct_debit": 1.5, "payroll": 1.6, "payroll_account": 1.6, "taxes": 1.4,
     "particular_plus": 1.3, "loans": 1.5, "e_account": 1.2},
    {"e_account": 4.0, "credit_card": 1.2, "current_account": 0.9, "long_deposit": 0.3, "pension_plan": 0.2,
     "pensions": 0.1, "mortgage": 0.6, "particular_account": 0.5},
    {"particular_plus": 3.0, "funds": 3.0, "securities": 3.5, "pension_plan": 2.0, "mortgage": 2.0,
     "long_deposit": 1.8, "derivative": 4.0, "guarantee": 3.0, "mas_particular": 2.0, "credit_card": 1.5, "taxes": 1.5},
    {"__all__": 0.4, "current_account": 1.0, "pensions": 1.0},
    {"__all__": 1.4, "funds": 2.0, "securities": 2.0},
)  # fmt: skip
# Log-odds per unit of latent deviation (rows: wealth, activity, risk, digital, loyalty).
_PRODUCT_LATENT = (
    {"short_deposit": 0.6, "medium_deposit": 0.6, "long_deposit": 0.6, "funds": 0.7, "securities": 0.7,
     "particular_plus": 0.6, "mortgage": 0.4, "guarantee": 0.5, "loans": -0.3},
    {"credit_card": 0.6, "direct_debit": 0.4, "taxes": 0.3, "current_account": 0.3},
    {"funds": 0.5, "securities": 0.7, "derivative": 0.9, "short_deposit": -0.4, "medium_deposit": -0.4,
     "long_deposit": -0.4, "loans": 0.3},
    {"e_account": 0.9, "credit_card": 0.2, "particular_account": -0.3},
    {"payroll_account": 0.5, "payroll": 0.5, "direct_debit": 0.3, "mortgage": 0.2, "mas_particular": 0.4},
)  # fmt: skip
AGE_BANDS = np.array([25, 35, 50, 65])  # -> bands <25, 25-34, 35-49, 50-64, 65+ (tree-friendly thresholds)
_PRODUCT_AGE = {
    "pensions": (-4.0, -4.0, -3.0, -1.5, 2.5), "pension_plan": (-2.0, -0.5, 0.3, 0.8, -0.5),
    "mortgage": (-2.0, 0.8, 0.8, -0.2, -2.0), "junior_account": (-3.0, 0.3, 1.0, 0.0, -1.5),
    "payroll": (0.2, 0.6, 0.5, 0.3, -3.0), "payroll_account": (0.2, 0.6, 0.5, 0.3, -3.0),
    "e_account": (1.0, 0.6, 0.0, -0.5, -1.2), "loans": (-0.5, 0.5, 0.4, 0.0, -1.0),
    "particular_plus": (-1.0, -0.3, 0.3, 0.5, 0.5), "long_deposit": (-1.0, -0.6, 0.0, 0.5, 0.9),
    "credit_card": (-0.3, 0.3, 0.3, 0.0, -0.5),
}  # fmt: skip
_PRODUCT_SEGMENT = (
    {"particular_plus": 1.0, "funds": 0.6, "securities": 0.6, "guarantee": 1.0, "derivative": 0.8},
    {},
    {"e_account": 0.8, "mortgage": -1.5, "pension_plan": -1.0, "current_account": 0.2, "funds": -1.0},
)
HIGH_INCOME, LOW_INCOME = 90_000.0, 20_000.0
_PRODUCT_HIGH_INCOME = {"particular_plus": 0.8, "securities": 0.6, "funds": 0.5}
_PRODUCT_LOW_INCOME = {"mortgage": -1.2, "loans": -0.6, "credit_card": -0.5}
# Lagged intent -> acquisition: monthly conversion probability at full intent level (1.0). The log-odds
# weight is logit(q) - intercept, so an intent lifts its products to about q whatever their base rate
# (still gated by the other terms: no account -> no card, no questionnaire -> no investment).
_PRODUCT_INTENT = (
    {"credit_card": 0.10},
    {"mortgage": 0.06, "home_account": 0.04, "loans": 0.05},
    {"short_deposit": 0.05, "medium_deposit": 0.04, "long_deposit": 0.05, "saving": 0.01},
    {"funds": 0.06, "securities": 0.05, "pension_plan": 0.03, "derivative": 0.005},
    {"junior_account": 0.10, "loans": 0.01},
    {"e_account": 0.08},
)
ACCOUNT_PRODUCTS = (
    "current_account", "payroll_account", "mas_particular", "particular_account", "particular_plus", "e_account",
)  # fmt: skip
# --- planted mechanisms (docs/data.md §4.1) ------------------------------------------------------------------
# Each one raises specific hazards at t+1 and leaves its footprint at t only in a structure that monthly
# totals and category shares do not show. They draw from their own streams (``SeedSequence([seed, 2, m + 1, c])``,
# the cyclic one ``[seed, 3, m + 1, c]``) whether on or off, so switching one off leaves every other draw as it
# was: with none on, the raw tables equal generator v1's.
MECHANISMS: tuple[str, ...] = ("sequential", "hierarchical", "graph", "cyclic")
# Sequential: an active customer goes quiet and comes back with a burst in the month's last days (same count,
# categories and amounts as usual; only the timing moves), then takes a loan the next month.
BURST_P = 0.03  # monthly probability among active customers
BURST_DAYS = 7  # every transaction falls in the last 7 days: >= 3 quiet weeks before
BURST_MIN_TXNS = 3  # fewer transactions than this cannot show the pattern, so the mechanism does not act
_PRODUCT_BURST = {"loans": 0.05}  # monthly conversion at t+1, like _PRODUCT_INTENT
# Hierarchical: restaurant spend moves to grocery (both children of L1 "food", whose count share is unchanged):
# cutting back to save, followed by a deposit.
SHIFT_ONSET, SHIFT_END = 0.02, 0.40  # monthly; ~5% of customers at a time (3.8% of customer-months act: active ones)
SHIFT_FROM, SHIFT_TO, SHIFT_FRACTION = "restaurants", "grocery", 0.8
_PRODUCT_SHIFT = {"short_deposit": 0.02, "medium_deposit": 0.01, "long_deposit": 0.02}
# Graph: customers form communities of 8 (a random partition within each chunk, unrelated to ids) that share
# neighbourhood merchants; a member's acquisition of a peer product at t raises the others' odds of it at t+1.
COMMUNITY_SIZE = 8
HANGOUT_L2 = ("restaurants", "bars", "grocery", "recreation", "personal_services")
HANGOUT_P = 0.5  # share of a member's transactions in those categories made at the community's merchant of the code
LOCAL_MERCHANTS = 4096  # neighbourhood merchants per code of those categories, outside the public pool
PEER_PRODUCTS = ("credit_card", "e_account", "funds", "securities", "pension_plan", "short_deposit", "long_deposit")
PEER_LOGODDS = 3.0  # x20 odds
# Cyclic: a third of customers shop for groceries on one fixed weekday (a weekly rhythm); a disruption (moving
# out, a break-up, a new job elsewhere) dissolves the rhythm for a month -- same count, categories and amounts,
# only the days lose their period -- and the customer is likelier to drop a core product the next month.
# Own stream: SeedSequence([seed, 3, m + 1, c]) (routines: [seed, 3, 0, c]).
ROUTINE_SHARE = 0.35
ROUTINE_L2 = "grocery"
BREAK_P = 0.04  # monthly, among customers with a routine
BREAK_CHURN_LOGODDS = 3.0  # on each core product's churn hazard at t+1

ACQ_NOISE_SD = 0.6  # customer-month logit noise (unobservable even in principle)
CHURN_NOISE_SD = 0.6


@dataclass(frozen=True)
class SyntheticConfig:
    """What defines a synthetic panel. Equal configs give byte-identical files.

    ``chunk_size`` (customers per chunk) bounds memory and is part of the content definition: every chunk
    has its own random stream, so another chunk size gives a different (statistically identical) panel.
    """

    n_customers: int = 5000
    start_month: date = date(2015, 1, 1)
    n_months: int = 17
    seed: int = 7
    chunk_size: int = 50_000
    mechanisms: tuple[str, ...] = MECHANISMS  # planted mechanisms switched on (§4.1); () = generator v1

    def __post_init__(self) -> None:
        mech = tuple(self.mechanisms)
        unknown = sorted(set(mech) - set(MECHANISMS))
        if unknown:
            raise ValueError(f"mechanisms={list(mech)}: unknown {unknown} (known: {list(MECHANISMS)})")
        object.__setattr__(self, "mechanisms", tuple(m for m in MECHANISMS if m in mech))
        if not 1 <= self.n_customers <= 9_999_999:
            raise ValueError(f"n_customers={self.n_customers}: must be in 1..9,999,999 (ids are S + 7 digits)")
        if self.n_months < 1:
            raise ValueError(f"n_months={self.n_months}: must be >= 1")
        if not 1 <= self.chunk_size <= 1_000_000:
            raise ValueError(f"chunk_size={self.chunk_size}: must be in 1..1,000,000")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed}: must be >= 0")
        object.__setattr__(self, "start_month", month_start(self.start_month))

    @property
    def months(self) -> list[date]:
        return [add_months(self.start_month, m) for m in range(self.n_months)]

    @property
    def n_chunks(self) -> int:
        return -(-self.n_customers // self.chunk_size)

    def to_json(self) -> dict:
        return {
            "n_customers": self.n_customers,
            "start_month": self.start_month.isoformat(),
            "n_months": self.n_months,
            "seed": self.seed,
            "chunk_size": self.chunk_size,
            "mechanisms": list(self.mechanisms),
        }


# ------------------------------------------------------------------------------------------------------------
# Derived parameter arrays (built once)
# ------------------------------------------------------------------------------------------------------------


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    return np.log(p) - np.log1p(-p)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class _Params:
    n_l2: int
    l2_mix_log: np.ndarray  # (6, n_l2) log base mix per persona
    l2_latent: np.ndarray  # (5, n_l2)
    l2_intent: np.ndarray  # (6, n_l2)
    amount_mu: np.ndarray  # (n_l2,)
    amount_sd: np.ndarray
    amount_intent: np.ndarray  # (6, n_l2)
    code_key: np.ndarray  # flat monotone key for the within-L2 code draw
    code_order: np.ndarray  # position in code_key -> code index
    code_pool: np.ndarray  # merchants per code
    code_pool_offset: np.ndarray
    merchant_ids: pa.Array  # every merchant id string, indexed by pool_offset + k (then the local merchants)
    local_offset: np.ndarray  # per code: index of its first neighbourhood merchant (-1: none)
    hour_key: np.ndarray  # flat monotone key over (persona, weekend) x 24 hours
    channel_p: np.ndarray  # (6, n_channels)
    share_logit: np.ndarray  # (24,)
    acq_logit: np.ndarray  # (24,)
    churn_logit: np.ndarray  # (24,)
    prod_persona: np.ndarray  # (6, 24)
    prod_latent: np.ndarray  # (5, 24)
    prod_age: np.ndarray  # (5 bands, 24)
    prod_segment: np.ndarray  # (3, 24)
    prod_hi_income: np.ndarray
    prod_lo_income: np.ndarray
    intent_conversion: np.ndarray  # (6, 24) monthly conversion probability at full intent, 0 = unrelated
    account_cols: np.ndarray
    investment_cols: np.ndarray
    deposit_cols: np.ndarray
    core_cols: np.ndarray
    intent_products: tuple[np.ndarray, ...]  # per intent: products whose acquisition satisfies it
    shift_from: int  # L2 index
    shift_to: int
    hangout_l2: np.ndarray  # bool (n_l2,)
    peer_cols: np.ndarray
    routine_l2: int


def _l2_vec(d: dict[str, float], names: tuple[str, ...], default: float = 0.0) -> np.ndarray:
    unknown = set(d) - set(names) - {"__flatten__", "__all__"}
    if unknown:
        raise KeyError(f"unknown L2 categories {sorted(unknown)}")
    return np.array([d.get(n, default) for n in names], dtype=np.float64)


def _prod_vec(d: dict[str, float], default: float = 0.0) -> np.ndarray:
    unknown = set(d) - set(PRODUCT_NAMES) - {"__all__"}
    if unknown:
        raise KeyError(f"unknown products {sorted(unknown)}")
    base = d.get("__all__", default)
    return np.array([d.get(n, base) for n in PRODUCT_NAMES], dtype=np.float64)


def _pcols(names) -> np.ndarray:
    return np.array([PRODUCT_NAMES.index(n) for n in names], dtype=np.int64)


def _hour_profiles() -> np.ndarray:
    """(6 personas, 2 day types, 24) hour probabilities; weekends start later and spread wider."""
    hours = np.arange(24) + 0.5
    out = np.zeros((len(PERSONAS), 2, 24))
    for p, bumps in enumerate(_HOUR_BUMPS):
        for weekend, (shift, widen) in enumerate(((0.0, 1.0), (1.5, 1.3))):
            prof = np.full(24, 0.02)
            for centre, sd, weight in bumps:
                d = np.abs(hours - (centre + shift) % 24)
                d = np.minimum(d, 24 - d)
                prof += weight * np.exp(-0.5 * (d / (sd * widen)) ** 2)
            out[p, weekend] = prof / prof.sum()
    return out


def _flat_key(prob: np.ndarray) -> np.ndarray:
    """Row-wise CDFs laid end to end: row r occupies (r, r + 1]. ``searchsorted(key, r + u, 'right')``
    then draws from row r with one vectorised call (the last CDF value is forced to exactly 1)."""
    cdf = np.cumsum(prob, axis=-1)
    cdf = cdf / cdf[..., -1:]
    cdf[..., -1] = 1.0
    return (cdf + np.arange(prob.shape[0])[:, None]).ravel()


@lru_cache(maxsize=1)
def _params() -> _Params:
    h = mcc_hierarchy()
    names = h.l2_names
    n_l2 = len(names)
    base = _l2_vec(_L2_BASE, names)
    if np.any(base <= 0):
        raise ValueError("every L2 category needs a positive base weight")
    mix = np.empty((len(PERSONAS), n_l2))
    for p, mult in enumerate(_L2_PERSONA_MULT):
        m = base * _l2_vec(mult, names, default=1.0)
        mix[p] = m ** mult.get("__flatten__", 1.0)  # "diversified" spreads its spend more evenly
    mix /= mix.sum(1, keepdims=True)

    # Codes: fixed within-L2 weights; a flat key sorted by (L2, code) gives one searchsorted per draw.
    order = np.argsort(h.code_l2, kind="stable")
    weight = np.array([_CODE_WEIGHT.get(int(c), 1.0) for c in h.codes])
    l2_of = h.code_l2[order]
    w_sorted = weight[order]
    l2_total = np.bincount(l2_of, weights=w_sorted, minlength=n_l2)
    within = w_sorted / l2_total[l2_of]
    cdf = np.empty_like(within)
    for l2 in range(n_l2):  # 31 categories, once: setup only
        sel = l2_of == l2
        c = np.cumsum(within[sel])
        c[-1] = 1.0
        cdf[sel] = c + l2
    share = (base / base.sum())[h.code_l2] * (weight / l2_total[h.code_l2])
    pool = np.maximum(20, np.round(share * 100 * MERCHANTS_PER_UNIT)).astype(np.int64)
    offset = np.concatenate([[0], np.cumsum(pool)[:-1]])
    # Neighbourhood merchants (graph mechanism) follow the public pool of their code in numbering and after
    # every public merchant in the array, so the public indices are those of generator v1.
    local = np.isin(h.code_l2, [names.index(n) for n in HANGOUT_L2])
    local_offset = np.where(local, pool.sum() + LOCAL_MERCHANTS * (np.cumsum(local) - 1), -1)
    merchant_ids = pa.array(
        [f"M{int(code)}-{k:05d}" for code, n in zip(h.codes, pool) for k in range(n)]
        + [f"M{int(code)}-{n + k:05d}" for code, n in zip(h.codes[local], pool[local]) for k in range(LOCAL_MERCHANTS)],
        pa.string(),
    )

    amount = np.array([_L2_AMOUNT[n] for n in names])
    channel = np.tile(_CHANNEL_BASE, (len(PERSONAS), 1))
    for p, tilt in _CHANNEL_TILT.items():
        for ch, mult in tilt.items():
            channel[p, ch] *= mult
    channel /= channel.sum(1, keepdims=True)

    share0 = np.array([_PRODUCT_RATES[n][0] for n in PRODUCT_NAMES])
    churn0 = np.array([_PRODUCT_RATES[n][1] for n in PRODUCT_NAMES])
    acq0 = churn0 * share0 / (1 - share0)
    inv = _pcols(PRODUCTS_BY_GROUP["investments"] + ("derivative",))
    intent_products = tuple(_pcols(n for n, v in d.items() if v >= 0.03) for d in _PRODUCT_INTENT)
    return _Params(
        n_l2=n_l2,
        l2_mix_log=np.log(mix),
        l2_latent=np.stack([_l2_vec(d, names) for d in _L2_LATENT]),
        l2_intent=np.stack([_l2_vec(d, names) for d in _L2_INTENT]),
        amount_mu=amount[:, 0],
        amount_sd=amount[:, 1],
        amount_intent=np.stack([_l2_vec(d, names) for d in _AMOUNT_INTENT]),
        code_key=cdf,
        code_order=order,
        code_pool=pool,
        code_pool_offset=offset,
        merchant_ids=merchant_ids,
        local_offset=local_offset,
        hour_key=_flat_key(_hour_profiles().reshape(-1, 24)),
        channel_p=channel,
        share_logit=_logit(share0),
        acq_logit=_logit(acq0),
        churn_logit=_logit(churn0),
        prod_persona=np.log(np.stack([_prod_vec(d, 1.0) for d in _PRODUCT_PERSONA_MULT])),
        prod_latent=np.stack([_prod_vec(d) for d in _PRODUCT_LATENT]),
        prod_age=np.stack([_prod_vec({k: v[b] for k, v in _PRODUCT_AGE.items()}) for b in range(5)]),
        prod_segment=np.stack([_prod_vec(d) for d in _PRODUCT_SEGMENT]),
        prod_hi_income=_prod_vec(_PRODUCT_HIGH_INCOME),
        prod_lo_income=_prod_vec(_PRODUCT_LOW_INCOME),
        intent_conversion=np.stack([_prod_vec(d) for d in _PRODUCT_INTENT]),
        account_cols=_pcols(ACCOUNT_PRODUCTS),
        investment_cols=inv,
        deposit_cols=_pcols(PRODUCTS_BY_GROUP["deposits"]),
        core_cols=_pcols(CORE_PRODUCTS),
        intent_products=intent_products,
        shift_from=names.index(SHIFT_FROM),
        shift_to=names.index(SHIFT_TO),
        hangout_l2=np.isin(np.array(names), HANGOUT_L2),
        peer_cols=_pcols(PEER_PRODUCTS),
        routine_l2=names.index(ROUTINE_L2),
    )


_P = {n: i for i, n in enumerate(PRODUCT_NAMES)}

# ------------------------------------------------------------------------------------------------------------
# Customer state: O(N) arrays carried across months
# ------------------------------------------------------------------------------------------------------------


@dataclass
class _State:
    persona: np.ndarray  # int8
    lat: np.ndarray  # float32 (N, 5)
    lat_mu: np.ndarray  # float32 (N, 5) personal long-run mean (persona mean + offset + life-event shifts)
    intent: np.ndarray  # float32 (N, 6) level in [0, 1]
    hold: np.ndarray  # int8 (N, 24)
    income_base: np.ndarray  # float64
    income_missing: np.ndarray  # bool, persistent part of the missingness
    age_m0: np.ndarray  # int16 age in months at month 0
    gender: np.ndarray  # int8
    province: np.ndarray  # int8
    channel: np.ndarray  # int8
    segment: np.ndarray  # int8
    join_m: np.ndarray  # int16 month index of joining (<= 0: before the panel starts)
    join_day: np.ndarray  # int8 day-of-month offset of the join date
    tenure_unknown: np.ndarray  # bool
    left: np.ndarray  # bool: has left the bank (absent from then on)
    inactive: np.ndarray  # bool
    suit: np.ndarray  # int8 index into SUITABILITY_PROFILES, -1 = no questionnaire yet
    fav_l2: np.ndarray  # int8
    last_spend: np.ndarray  # float32 spend of the previous month (observable behaviour)
    event: np.ndarray  # int8 life event of the current month
    community: np.ndarray  # int32 community id (graph mechanism), unique within the panel
    shift: np.ndarray  # bool: restaurant -> grocery shift under way (hierarchical mechanism)
    mech_burst: np.ndarray  # bool: this month's transactions were a month-end burst (acts at the next transition)
    mech_shift: np.ndarray  # bool: this month's mix was shifted (acts at the next transition)
    peer_mask: np.ndarray  # int32 bits over products: a peer acquired it this month and the customer lacks it
    routine_wd: np.ndarray  # int8 weekday (0 = Monday) of the weekly grocery routine, -1 = none (cyclic)
    mech_break: np.ndarray  # bool: this month's routine was broken (acts at the next transition)

    @classmethod
    def empty(cls, n: int) -> _State:
        return cls(
            persona=np.zeros(n, np.int8),
            lat=np.zeros((n, 5), np.float32),
            lat_mu=np.zeros((n, 5), np.float32),
            intent=np.zeros((n, 6), np.float32),
            hold=np.zeros((n, N_PRODUCTS), np.int8),
            income_base=np.zeros(n, np.float64),
            income_missing=np.zeros(n, bool),
            age_m0=np.zeros(n, np.int16),
            gender=np.zeros(n, np.int8),
            province=np.zeros(n, np.int8),
            channel=np.zeros(n, np.int8),
            segment=np.zeros(n, np.int8),
            join_m=np.zeros(n, np.int16),
            join_day=np.zeros(n, np.int8),
            tenure_unknown=np.zeros(n, bool),
            left=np.zeros(n, bool),
            inactive=np.zeros(n, bool),
            suit=np.full(n, -1, np.int8),
            fav_l2=np.zeros(n, np.int8),
            last_spend=np.zeros(n, np.float32),
            event=np.zeros(n, np.int8),
            community=np.zeros(n, np.int32),
            shift=np.zeros(n, bool),
            mech_burst=np.zeros(n, bool),
            mech_shift=np.zeros(n, bool),
            peer_mask=np.zeros(n, np.int32),
            routine_wd=np.full(n, -1, np.int8),
            mech_break=np.zeros(n, bool),
        )

    def chunk(self, sl: slice) -> _State:
        """Views (not copies) of one chunk: in-place updates write through to the full arrays."""
        return _State(**{k: v[sl] for k, v in self.__dict__.items()})


@dataclass(frozen=True)
class _Month:
    index: int
    start: date
    days: int
    epoch_day: int  # days since 1970-01-01 of the month start
    weekend: np.ndarray  # bool per day of month

    @classmethod
    def of(cls, config: SyntheticConfig, m: int) -> _Month:
        start = add_months(config.start_month, m)
        days = (add_months(start, 1) - start).days
        wd0 = start.weekday()
        return cls(m, start, days, (start - date(1970, 1, 1)).days, (wd0 + np.arange(days)) % 7 >= 5)


def _age_years(st: _State, m: int) -> np.ndarray:
    return (st.age_m0.astype(np.int32) + m) // 12


def _age_band(age: np.ndarray) -> np.ndarray:
    return np.searchsorted(AGE_BANDS, age, side="right")


def _income(st: _State) -> np.ndarray:
    """True income: a personal base that moves a little with the wealth latent around its personal mean."""
    return np.round(st.income_base * np.exp(0.15 * (st.lat[:, W] - st.lat_mu[:, W])), 2)


def _suitability_from_risk(risk: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    score = risk + rng.normal(0.0, 0.4, risk.shape)
    return np.where(score < -0.35, 0, np.where(score > 0.45, 2, 1)).astype(np.int8)


def _categorical(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One draw per row of a (n, k) probability matrix."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(len(probs))[:, None] * cdf[:, -1:]
    return np.minimum((u >= cdf).sum(1), probs.shape[1] - 1)


# ------------------------------------------------------------------------------------------------------------
# Initial state (month 0)
# ------------------------------------------------------------------------------------------------------------


def _init_attributes(st: _State, n_months: int, rng: np.random.Generator) -> None:
    """Persona, latents, demographics, life span, flags and intents of a chunk (everything but holdings)."""
    par = _params()
    n = len(st.persona)
    persona = rng.choice(len(PERSONAS), size=n, p=PERSONA_WEIGHTS)
    st.persona[:] = persona
    st.lat_mu[:] = PERSONA_LATENT_MEANS[persona] + rng.normal(0.0, PERSONAL_MEAN_SD, (n, 5))
    st.lat[:] = st.lat_mu + rng.normal(0.0, LATENT_SD, (n, 5))

    age = np.clip(rng.normal(PERSONA_AGE[persona, 0], PERSONA_AGE[persona, 1]), 18, 95)
    st.age_m0[:] = np.floor(age).astype(np.int16) * 12 + rng.integers(0, 12, n)
    st.gender[:] = rng.random(n) < 0.48  # 0 = F (52%), 1 = M
    st.province[:] = rng.choice(len(PROVINCES), size=n, p=PROVINCE_WEIGHTS)
    st.channel[:] = _categorical(rng, par.channel_p[persona])
    seg = _categorical(rng, PERSONA_SEGMENT[persona])
    age_y = _age_years(st, 0)
    seg = np.where((seg == SEG_UNI) & (age_y >= 32), SEG_PART, seg)
    seg = np.where((seg == SEG_PART) & (st.lat_mu[:, W] > 1.3) & (rng.random(n) < 0.25), SEG_TOP, seg)
    st.segment[:] = seg

    log_inc = rng.normal(PERSONA_INCOME[persona, 0], PERSONA_INCOME[persona, 1])
    st.income_base[:] = np.exp(log_inc + 0.3 * (st.lat_mu[:, W] - PERSONA_LATENT_MEANS[persona, W]))
    st.income_missing[:] = rng.random(n) < PERSONA_INCOME_MISSING[persona]

    tenure = rng.gamma(PERSONA_TENURE[persona, 0], PERSONA_TENURE[persona, 1])
    adult_months = st.age_m0.astype(np.int64) - 18 * 12  # no one opened an account before turning 18
    tenure = np.minimum(np.minimum(tenure, 256), np.maximum(adult_months, 0)).astype(np.int16)
    joiner = (rng.random(n) < 0.10) & (n_months > 1)  # ~10% join during the panel, at a uniform month
    st.join_m[:] = np.where(joiner, rng.integers(1, max(n_months, 2), n), -tenure)
    st.join_day[:] = rng.integers(0, 28, n)
    st.tenure_unknown[:] = rng.random(n) < 0.05

    wdev = st.lat[:, W] - POP_LATENT_MEAN[W]
    rdev = st.lat[:, RISK] - POP_LATENT_MEAN[RISK]
    has_suit = rng.random(n) < _sigmoid(_logit(0.60) + 0.6 * wdev + 0.5 * rdev)
    st.suit[:] = np.where(has_suit, _suitability_from_risk(st.lat[:, RISK], rng), -1)
    p_inactive = _inactive_stationary(st)
    st.inactive[:] = rng.random(n) < p_inactive
    st.fav_l2[:] = _categorical(rng, np.exp(par.l2_mix_log[persona]))
    # Intents already under way at the start, at their stationary prevalence.
    onset = _intent_onset_prob(st, age_y)
    active = rng.random((n, 6)) < onset * 4.0
    st.intent[:] = np.where(active, rng.uniform(INTENT_FLOOR, 1.0, (n, 6)), 0.0)


# Month-0 holdings are drawn product by product in this order, each given the products drawn before it, so
# the complementarity structure (payroll on a payroll account, cards on accounts, ...) is there from the start.
_INIT_ORDER = (
    "current_account", "payroll_account", "particular_account", "particular_plus", "mas_particular", "e_account",
    "junior_account", "payroll", "pensions", "credit_card", "direct_debit", "taxes", "mortgage", "home_account",
    "loans", "long_deposit", "medium_deposit", "short_deposit", "funds", "securities", "pension_plan",
    "derivative", "saving", "guarantee",
)  # fmt: skip
_HAS_COMPLEMENT = frozenset(
    ("payroll_account", "payroll", "pensions", "credit_card", "direct_debit", "taxes", "mortgage", "home_account")
) | frozenset(PRODUCTS_BY_GROUP["deposits"] + PRODUCTS_BY_GROUP["investments"] + ("derivative",))


def _draw_initial(
    st: _State, u: np.ndarray, share_logit: np.ndarray, target: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Sequential month-0 draw. With ``target`` (calibration), each product's offset is first solved by
    bisection so that its mean probability equals the target share. Returns (holdings, offsets)."""
    age_y = _age_years(st, 0)
    n = len(st.persona)
    aff = _affinity(st, age_y, np.zeros((n, N_PRODUCTS), np.int8))
    fixed = sum(v for k, v in aff.items() if k != "complement")
    hold = np.zeros((n, N_PRODUCTS), np.int8)
    offset = np.zeros(N_PRODUCTS)
    for name in _INIT_ORDER:
        j = _P[name]
        comp = _complement(hold)[:, j] if name in _HAS_COMPLEMENT else 0.0
        logit = share_logit[j] + fixed[:, j] + comp
        if target is not None:
            lo, hi = -15.0, 15.0
            for _ in range(40):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if _sigmoid(logit - mid).mean() > target[j] else (lo, mid)
            offset[j] = (lo + hi) / 2
        hold[:, j] = u[:, j] < _sigmoid(logit - offset[j])
    return hold, offset


def _init_holdings(st: _State, rng: np.random.Generator) -> None:
    st.hold[:], _ = _draw_initial(st, rng.random((len(st.persona), N_PRODUCTS)), _intercepts()[0])
    st.last_spend[:] = 0.0


@lru_cache(maxsize=1)
def _intercepts() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(share, acquisition, churn) intercepts with the affinity centred per product, and the (6, 24)
    intent log-odds weights derived from the conversion probabilities.

    Affinity terms have a non-zero population mean, which would move every share away from
    ``_PRODUCT_RATES``. A fixed calibration sample (its own seed, independent of the config) gives the
    per-product offset ``o`` that restores the target share; the hazards take half of it each, so the
    stationary odds (acquisition / churn) stay consistent with the initial draw.
    """
    par = _params()
    sample = _State.empty(20_000)
    _init_attributes(sample, 1, np.random.default_rng(np.random.SeedSequence([20150101, 99])))
    u = np.random.default_rng(np.random.SeedSequence([20150101, 100])).random((20_000, N_PRODUCTS))
    _, offset = _draw_initial(sample, u, par.share_logit, target=_sigmoid(par.share_logit))
    acq = par.acq_logit - 0.5 * offset + _ACQ_DRIFT
    conv = par.intent_conversion
    intent_w = np.where(conv > 0, np.maximum(_logit(np.where(conv > 0, conv, 0.5)) - acq, 0.5), 0.0)
    return par.share_logit - offset, acq, par.churn_logit + 0.5 * offset + _CHURN_DRIFT, intent_w


@lru_cache(maxsize=1)
def _mechanism_weights() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(24,) acquisition log-odds added at t+1 by a month-end burst, a sibling shift and a peer's acquisition.
    Burst and shift follow the intent rule (``logit(conversion) - intercept``, at least 0.5)."""
    _, acq, _, _ = _intercepts()

    def lift(d: dict[str, float]) -> np.ndarray:
        conv = _prod_vec(d)
        return np.where(conv > 0, np.maximum(_logit(np.where(conv > 0, conv, 0.5)) - acq, 0.5), 0.0)

    peer = np.zeros(N_PRODUCTS)
    peer[_params().peer_cols] = PEER_LOGODDS
    return lift(_PRODUCT_BURST), lift(_PRODUCT_SHIFT), peer


def _bits(mask: np.ndarray) -> np.ndarray:
    """(n,) int32 product bit masks -> (n, 24) bool."""
    return ((mask[:, None] >> np.arange(N_PRODUCTS, dtype=np.int32)) & 1).astype(bool)


# Per-product corrections that cancel the share drift measured over a 17-month run: intents, onboarding
# and logit noise add acquisitions the stationary algebra above does not see. Intent-driven products get
# a higher churn instead of a lower base rate, so their acquisitions stay mostly intent-led.
_ACQ_DRIFT = _prod_vec(
    {"credit_card": -0.35, "taxes": 0.2, "payroll": 0.15, "particular_account": 0.1, "particular_plus": 0.1,
     "e_account": -0.1}
)  # fmt: skip
_CHURN_DRIFT = _prod_vec(
    {"credit_card": 1.0, "mortgage": 1.2, "junior_account": 2.2, "home_account": 1.8, "e_account": 0.8,
     "medium_deposit": 0.25, "long_deposit": 0.25, "saving": 1.4}
)  # fmt: skip


def _inactive_stationary(st: _State) -> np.ndarray:
    p_off, p_on = _activity_switch(st)
    return p_off / (p_off + p_on)


def _activity_switch(st: _State) -> tuple[np.ndarray, np.ndarray]:
    """Monthly P(active -> inactive) and P(inactive -> active): persistent, ~10% inactive overall."""
    adev = st.lat[:, ACT] - POP_LATENT_MEAN[ACT]
    p_off = _sigmoid(_logit(0.025) - 0.8 * adev + 0.8 * (st.persona == 4))
    return p_off, np.full(len(st.persona), 0.25)


# ------------------------------------------------------------------------------------------------------------
# Product hazards
# ------------------------------------------------------------------------------------------------------------


def _affinity(st: _State, age_y: np.ndarray, hold: np.ndarray) -> dict[str, np.ndarray]:
    """Log-odds tilt of holding each product, by source. Observable: age, segment, income, complement;
    latent: persona, latent."""
    par = _params()
    income = _income(st)
    lat_dev = st.lat.astype(np.float64) - POP_LATENT_MEAN
    return {
        "persona": par.prod_persona[st.persona],
        "latent": lat_dev @ par.prod_latent,
        "age": par.prod_age[_age_band(age_y)],
        "segment": par.prod_segment[st.segment],
        "income": np.where(income[:, None] > HIGH_INCOME, par.prod_hi_income, 0.0)
        + np.where(income[:, None] < LOW_INCOME, par.prod_lo_income, 0.0),
        "complement": _complement(hold),
    }


def _complement(hold: np.ndarray) -> np.ndarray:
    """Log-odds from the other products held: payroll with a payroll account, cards and debits on accounts,
    mortgage with a home account, several products of one deposit/investment family."""
    par = _params()
    has = hold.astype(bool)
    any_acct = has[:, par.account_cols].any(1)
    comp = np.zeros(hold.shape)
    for name in ("credit_card", "direct_debit", "taxes"):
        comp[:, _P[name]] = np.where(any_acct, 0.8, -2.5)
    comp[:, _P["payroll"]] += 3.5 * has[:, _P["payroll_account"]] - 1.5
    comp[:, _P["payroll_account"]] += 1.5 * has[:, _P["payroll"]]
    comp[:, _P["pensions"]] += 1.0 * has[:, _P["payroll_account"]]
    comp[:, _P["mortgage"]] += 2.0 * has[:, _P["home_account"]]
    comp[:, _P["home_account"]] += 2.0 * has[:, _P["mortgage"]]
    for group in (par.deposit_cols, par.investment_cols):
        n_held = has[:, group].sum(1, keepdims=True)
        comp[:, group] += 0.6 * (n_held - has[:, group])  # other products of the same family
    return comp


OBSERVABLE_AFFINITY = ("age", "segment", "income", "complement")


@dataclass
class TransitionRecord:
    """Acquisition logit of every (customer, product) at one transition, split by information source."""

    base: np.ndarray  # intercept
    observable: np.ndarray  # attributes a feature can see (age band, income, segment, holdings, tenure, spend, ...)
    latent: np.ndarray  # persona, latent state, last month's life event
    intent: np.ndarray  # lagged intents (visible only through last month's transactions)
    mechanism: np.ndarray  # planted mechanisms of last month (visible only through timing, leaf mix, peers)
    noise: np.ndarray  # customer-month noise
    held: np.ndarray  # bool: product held before the transition (no acquisition possible)
    acquired: np.ndarray  # bool


def _transition_holdings(
    st: _State, rows: np.ndarray, m: int, month: _Month, rng: np.random.Generator, record: list | None
) -> tuple[np.ndarray, np.ndarray]:
    """Move holdings from month m-1 to m for the chunk rows ``rows``; uses state as of the end of m-1.
    Returns the (len(rows), 24) acquisition and loss masks."""
    par = _params()
    n_all = len(st.persona)
    u = rng.random((n_all, N_PRODUCTS))[rows]
    eps = rng.normal(0.0, 1.0, (n_all, N_PRODUCTS))[rows]
    sub = _State(**{k: v[rows] for k, v in st.__dict__.items()})
    age_y = _age_years(sub, m - 1)
    hold = sub.hold
    aff = _affinity(sub, age_y, hold)
    obs_aff = sum(aff[k] for k in OBSERVABLE_AFFINITY)
    lat_aff = aff["persona"] + aff["latent"]
    tenure = (m - 1) - sub.join_m.astype(np.int32)
    inactive = sub.inactive[:, None]

    obs = 0.5 * obs_aff - 1.2 * inactive
    new_customer = (tenure < 6)[:, None]
    for name in ("credit_card", "direct_debit", "e_account", "payroll_account"):
        obs[:, _P[name]] += 0.8 * new_customer[:, 0]
    spend_z = (np.log1p(sub.last_spend.astype(np.float64)) - 6.0) / 1.2
    obs[:, _P["credit_card"]] += 0.4 * spend_z
    obs[:, _P["direct_debit"]] += 0.2 * spend_z
    if month.start.month == 6:  # tax season (Santander's `reca` spikes in June)
        obs[:, _P["taxes"]] += 1.2
    obs[:, par.investment_cols] -= 3.0 * (sub.suit < 0)[:, None]  # no questionnaire: investments mostly blocked

    lat = 0.5 * lat_aff
    salary = (sub.event == EV_SALARY)[:, None]
    lat[:, [_P["payroll_account"], _P["payroll"]]] += 1.5 * salary
    _, acq0, churn0, intent_w = _intercepts()
    intent = sub.intent.astype(np.float64) @ intent_w
    burst_w, shift_w, peer_w = _mechanism_weights()
    mech = sub.mech_burst[:, None] * burst_w + sub.mech_shift[:, None] * shift_w + _bits(sub.peer_mask) * peer_w
    noise = ACQ_NOISE_SD * eps
    acq_logit = acq0 + obs + lat + intent + mech + noise
    churn_logit = churn0 - 0.5 * (obs_aff + lat_aff) + 1.0 * inactive + CHURN_NOISE_SD * eps
    churn_logit[:, par.core_cols] += BREAK_CHURN_LOGODDS * sub.mech_break[:, None]

    held = hold.astype(bool)
    acquired = ~held & (u < _sigmoid(acq_logit))
    lost = held & (u < _sigmoid(churn_logit))
    st.hold[rows] = (held | acquired) & ~lost
    if record is not None:
        record.append(
            TransitionRecord(
                base=np.broadcast_to(acq0, held.shape).astype(np.float32),
                observable=obs.astype(np.float32),
                latent=lat.astype(np.float32),
                intent=intent.astype(np.float32),
                mechanism=mech.astype(np.float32),
                noise=noise.astype(np.float32),
                held=held,
                acquired=acquired,
            )
        )
    return acquired, lost


def _peer_mask(st: _State, first: int, acquired: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """(n,) int32 bits over PEER_PRODUCTS: another member of the customer's community acquired the product in
    this month's transition and the customer, present now, does not hold it. Communities never cross a chunk,
    so one bincount over (community, product) pairs does it."""
    par = _params()
    n, k = len(st.community), len(par.peer_cols)
    local = st.community.astype(np.int64) - first
    own = acquired[:, par.peer_cols]
    r, j = np.nonzero(own)
    per_comm = np.bincount(local[r] * k + j, minlength=n * k).reshape(n, k)
    peer = (per_comm[local] - own > 0) & ~st.hold[:, par.peer_cols].astype(bool) & alive[:, None]
    return (peer.astype(np.int32) << par.peer_cols.astype(np.int32)).sum(1, dtype=np.int32)


def _starter_holdings(st: _State, rows: np.ndarray, rng: np.random.Generator) -> None:
    """Products a customer opens with: mostly one account; digital customers an e_account."""
    n_all = len(st.persona)
    u = rng.random((n_all, 4))[rows]
    digital = st.lat[rows, DIG] > 0.5
    hold = np.zeros((len(rows), N_PRODUCTS), np.int8)
    hold[:, _P["current_account"]] = u[:, 0] < np.where(digital, 0.45, 0.75)
    hold[:, _P["e_account"]] = u[:, 1] < np.where(digital, 0.45, 0.08)
    hold[:, _P["particular_account"]] = u[:, 2] < 0.06
    hold[:, _P["payroll_account"]] = u[:, 3] < 0.06
    st.hold[rows] = hold


# ------------------------------------------------------------------------------------------------------------
# Monthly dynamics of the latent state
# ------------------------------------------------------------------------------------------------------------


def _evolve(st: _State, m: int, rng: np.random.Generator) -> None:
    """AR(1) latents, life events, activity, segment, questionnaire, favourite category (whole chunk)."""
    n = len(st.persona)
    par = _params()
    st.lat[:] = st.lat_mu + LATENT_RHO * (st.lat - st.lat_mu) + np.sqrt(1 - LATENT_RHO**2) * LATENT_SD * rng.normal(
        0.0, 1.0, (n, 5)
    ).astype(np.float32)

    age_y = _age_years(st, m)
    p_salary = np.where(age_y < 62, 0.022, 0.004)
    p_reloc = np.where(age_y < 35, 0.015, 0.008)
    p_family = np.where((age_y >= 25) & (age_y < 45), 0.018, 0.004)
    u = rng.random(n)
    event = np.select([u < p_salary, u < p_salary + p_reloc, u < p_salary + p_reloc + p_family], [1, 2, 3], 0)
    st.event[:] = event
    salary = event == EV_SALARY
    raise_factor = rng.uniform(1.03, 1.12, n)
    st.income_base[:] = np.where(salary, st.income_base * raise_factor, st.income_base)
    st.lat_mu[:, W] += 0.10 * salary
    st.lat_mu[:, RISK] -= 0.10 * (event == EV_FAMILY)
    moved = event == EV_RELOCATION
    new_prov = rng.choice(len(PROVINCES), size=n, p=PROVINCE_WEIGHTS)
    new_prov = np.where(new_prov == st.province, (new_prov + 1) % len(PROVINCES), new_prov)
    st.province[:] = np.where(moved, new_prov, st.province)

    p_off, p_on = _activity_switch(st)
    u = rng.random(n)
    st.inactive[:] = np.where(st.inactive, u >= p_on, u < p_off)

    u = rng.random(n)
    seg = st.segment
    grad = (seg == SEG_UNI) & (age_y >= 30) & (u < 0.03)
    up = (seg == SEG_PART) & (st.lat[:, W] > 1.3) & (u < 0.01)
    down = (seg == SEG_TOP) & (st.lat[:, W] < 0.2) & (u < 0.01)
    st.segment[:] = np.where(grad | down, SEG_PART, np.where(up, SEG_TOP, seg))

    u = rng.random(n)
    take_q = (st.suit < 0) & (u < 0.006 + 0.25 * st.intent[:, I_INVESTING])
    profile = _suitability_from_risk(st.lat[:, RISK], rng)
    st.suit[:] = np.where(take_q, profile, st.suit)

    switch = rng.random(n) < 0.02
    new_fav = _categorical(rng, np.exp(par.l2_mix_log[st.persona]))
    st.fav_l2[:] = np.where(switch, new_fav, st.fav_l2)


def _intent_onset_prob(st: _State, age_y: np.ndarray) -> np.ndarray:
    """(n, 6) monthly probability that each intent switches on, from latents, age and this month's event."""
    dev = st.lat.astype(np.float64) - POP_LATENT_MEAN
    ev = st.event
    prime = (age_y >= 25) & (age_y < 45)
    logits = np.stack(
        [
            _logit(0.012) + 0.5 * dev[:, W] + 0.4 * dev[:, ACT] + 0.7 * (st.persona == 3),
            _logit(0.004) + 0.8 * prime + 4.5 * (ev == EV_RELOCATION),
            _logit(0.012) + 0.4 * dev[:, W] - 0.3 * dev[:, RISK] + 3.0 * (ev == EV_SALARY),
            _logit(0.006) + 0.6 * dev[:, RISK] + 0.5 * dev[:, W] + 1.5 * (ev == EV_SALARY) + 0.5 * (st.suit >= 0),
            _logit(0.003) + 0.9 * prime + 4.5 * (ev == EV_FAMILY),
            _logit(0.010) + 0.8 * dev[:, DIG] + 0.5 * (age_y < 35),
        ],
        axis=1,
    )
    return _sigmoid(logits)


def _update_intents(st: _State, age_y: np.ndarray, satisfied: np.ndarray, rng: np.random.Generator) -> None:
    """Decay, quench the intents whose product was just acquired, then draw new onsets."""
    n = len(st.persona)
    level = st.intent * INTENT_DECAY
    level = np.where(satisfied, level * 0.4, level)
    level = np.where(level < INTENT_FLOOR, 0.0, level)
    onset = rng.random((n, 6)) < _intent_onset_prob(st, age_y)
    fresh = rng.uniform(0.7, 1.0, (n, 6))
    st.intent[:] = np.where(onset, np.maximum(level, fresh), level)


# ------------------------------------------------------------------------------------------------------------
# Transactions
# ------------------------------------------------------------------------------------------------------------


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@dataclass
class _Txns:
    row: np.ndarray  # index into the active rows, sorted by (row, ts)
    ts: np.ndarray  # int64 microseconds since epoch
    amount: np.ndarray
    mcc: np.ndarray  # int16
    merchant: np.ndarray  # int64 index into _Params.merchant_ids
    spend: np.ndarray  # per active row
    count: np.ndarray
    burst: np.ndarray  # bool per active row: the month-end burst was placed


def _l2_mix(st: _State, shift: np.ndarray | None = None) -> np.ndarray:
    """(n, n_l2) category probabilities: persona base x latent tilt x favourite x (1 + intent footprint).
    Rows in ``shift`` move SHIFT_FRACTION of their restaurant probability to grocery (same L1 total)."""
    par = _params()
    dev = st.lat.astype(np.float64) - POP_LATENT_MEAN
    logmix = par.l2_mix_log[st.persona] + dev @ par.l2_latent
    logmix[np.arange(len(logmix)), st.fav_l2] += np.log(FAV_L2_BOOST)
    mix = np.exp(logmix) * (1.0 + st.intent.astype(np.float64) @ par.l2_intent)
    mix /= mix.sum(1, keepdims=True)
    if shift is not None:
        moved = SHIFT_FRACTION * shift * mix[:, par.shift_from]
        mix[:, par.shift_from] -= moved
        mix[:, par.shift_to] += moved
    return mix


def _transactions(
    st: _State, global_idx: np.ndarray, month: _Month, seed: int, rng: np.random.Generator,
    mrng: np.random.Generator, mechanisms: tuple[str, ...] = (), broken: np.ndarray | None = None,
) -> _Txns:
    """One month of card transactions for the (active) customers in ``st``: fully vectorised. ``mrng`` is the
    mechanisms' stream: always drawn, so the other draws do not depend on which mechanisms are on."""
    par = _params()
    n = len(st.persona)
    if n == 0:
        empty = np.zeros(0, np.int64)
        return _Txns(empty, empty, np.zeros(0), np.zeros(0, np.int16), empty, np.zeros(0), empty, np.zeros(0, bool))
    lam = PERSONA_TXN_RATE[st.persona] * np.exp(0.3 * st.lat[:, ACT]) * (1.0 + 0.15 * st.intent.sum(1))
    count = rng.poisson(lam)
    shift = st.shift if "hierarchical" in mechanisms else None
    l2_counts = rng.multinomial(count, _l2_mix(st, shift))
    total = int(count.sum())
    row = np.repeat(np.arange(n), count)
    l2 = np.repeat(np.tile(np.arange(par.n_l2), n), l2_counts.ravel())

    u = rng.random((4, total))
    code = par.code_order[np.searchsorted(par.code_key, l2 + u[0], side="right")]
    day = rng.integers(0, month.days, total)
    burst = (mrng.random(n) < BURST_P) & (count >= BURST_MIN_TXNS) & ("sequential" in mechanisms)
    # Month-end burst: the uniform day maps monotonically onto the last BURST_DAYS days (no extra draw).
    day = np.where(burst[row], month.days - BURST_DAYS + day * BURST_DAYS // month.days, day)
    u_hang = mrng.random(total)
    if "cyclic" in mechanisms:
        # Weekly routine: a routine customer's grocery day moves back to the routine weekday of its week (the
        # next one for the first days of the month), unless the routine is broken this month or the month is a
        # month-end burst (its timing wins).
        wd = st.routine_wd[row].astype(np.int64)
        keep = (wd >= 0) & (l2 == par.routine_l2) & ~broken[row] & ~burst[row]
        back = (month.start.weekday() + day - wd) % 7
        moved = np.where(day - back >= 0, day - back, day - back + 7)
        day = np.where(keep & (moved < month.days), moved, day)
    key = st.persona[row].astype(np.int64) * 2 + month.weekend[day]
    hour = np.searchsorted(par.hour_key, key + u[1], side="right") - key * 24
    second = rng.integers(0, 3600, total)
    ts = (month.epoch_day + day) * 86_400_000_000 + hour * 3_600_000_000 + second * 1_000_000

    # Amount: category lognormal, shifted by wealth and by the intents that move bigger sums.
    mu = par.amount_mu[None, :] + 0.25 * st.lat[:, W, None] + st.intent.astype(np.float64) @ par.amount_intent
    log_amount = mu[row, l2] + par.amount_sd[l2] * rng.normal(0.0, 1.0, total)
    amount = np.maximum(np.round(np.exp(np.minimum(log_amount, np.log(50_000.0))), 2), 0.01)

    # Merchant: loyal customers go back to one of three favourite merchants per code (a stable hash of
    # customer, code and seed); others pick from the pool with a popularity skew.
    pool = par.code_pool[code]
    loyal = u[2] < 0.15 + 0.6 * _sigmoid(1.5 * st.lat[row, LOY])
    rank = (u[3] > 0.6).astype(np.uint64) + (u[3] > 0.9)
    h = _splitmix64(
        np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
        ^ global_idx[row].astype(np.uint64) * np.uint64(0xD1342543DE82EF95)
        ^ (code.astype(np.uint64) << np.uint64(40))
        ^ rank
    )
    fav_k = (h % pool.astype(np.uint64)).astype(np.int64)
    rand_k = np.minimum((pool * u[3] ** 2.5).astype(np.int64), pool - 1)
    merchant = par.code_pool_offset[code] + np.where(loyal, fav_k, rand_k)
    if "graph" in mechanisms:
        # Community members meet at one neighbourhood merchant per code (a stable hash of seed, community, code).
        hang = par.hangout_l2[l2] & (u_hang < HANGOUT_P)
        hc = code[hang].astype(np.uint64)
        hh = _splitmix64(
            np.uint64((seed * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF)
            ^ st.community[row[hang]].astype(np.uint64) * np.uint64(0x94D049BB133111EB)
            ^ (hc << np.uint64(40))
        )
        merchant[hang] = par.local_offset[code[hang]] + (hh % np.uint64(LOCAL_MERCHANTS)).astype(np.int64)

    order = np.argsort(row.astype(np.int64) << 42 | (ts - month.epoch_day * 86_400_000_000), kind="stable")
    row, ts, amount, code, merchant = row[order], ts[order], amount[order], code[order], merchant[order]
    spend = np.bincount(row, weights=amount, minlength=n)
    return _Txns(row, ts, amount, mcc_hierarchy().codes[code], merchant, spend, count, burst)


# ------------------------------------------------------------------------------------------------------------
# Arrow tables of one chunk
# ------------------------------------------------------------------------------------------------------------


def _customer_ids(global_idx: np.ndarray) -> pa.Array:
    digits = pc.utf8_lpad(pa.array(global_idx, pa.int64()).cast(pa.string()), 7, "0")
    return pc.binary_join_element_wise("S", digits, "")


def _dates(epoch_days: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    return pa.array(epoch_days.astype(np.int32), pa.int32(), mask=mask).cast(pa.date32())


def _lookup(values: tuple[str, ...], idx: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    return pa.array(values, pa.string()).take(pa.array(idx.astype(np.int32), pa.int32(), mask=mask))


def _customers_table(
    st: _State, ids: pa.Array, m: int, month: _Month, income_null: np.ndarray, start_epoch_month: np.datetime64
) -> pa.Table:
    n = len(st.persona)
    income = _income(st)
    join_month = start_epoch_month + st.join_m.astype(np.int64)
    join_days = (join_month.astype("datetime64[D]") - np.datetime64("1970-01-01", "D")).astype(np.int64) + st.join_day
    tenure = (m - st.join_m.astype(np.int32)).astype(np.int32)
    cols = [
        ids,
        _dates(np.full(n, month.epoch_day)),
        pa.array(np.clip(_age_years(st, m), 18, 110).astype(np.int16), pa.int16()),
        _lookup(GENDERS, st.gender),
        _lookup(PROVINCES, st.province),
        _lookup(CHANNELS, st.channel),
        _lookup(SEGMENTS, st.segment),
        pa.array(income, pa.float64(), mask=income_null),
        _dates(join_days, mask=st.tenure_unknown),
        pa.array(tenure, pa.int32(), mask=st.tenure_unknown),
        pa.array(~st.inactive, pa.bool_()),
        _lookup(SUITABILITY_PROFILES, np.maximum(st.suit, 0), mask=st.suit < 0),
    ]
    return pa.Table.from_arrays(cols, schema=TABLE_SCHEMAS["customers"])


def _holdings_table(st: _State, ids: pa.Array, month: _Month) -> pa.Table:
    n = len(st.persona)
    cols = [ids, _dates(np.full(n, month.epoch_day))]
    cols += [pa.array(np.ascontiguousarray(st.hold[:, j]), pa.int8()) for j in range(N_PRODUCTS)]
    return pa.Table.from_arrays(cols, schema=TABLE_SCHEMAS["holdings"])


def _ground_truth_table(
    st: _State, ids: pa.Array, month: _Month, full: _State, rows: np.ndarray, routine_on: bool
) -> pa.Table:
    """``st``: the present customers' state; ``full``/``rows``: the chunk state after this month's mechanisms."""
    n = len(st.persona)
    cols = [ids, _dates(np.full(n, month.epoch_day)), _lookup(PERSONAS, st.persona)]
    cols += [pa.array(np.ascontiguousarray(st.lat[:, k]), pa.float32()) for k in range(5)]
    cols += [pa.array(np.ascontiguousarray(st.intent[:, k]), pa.float32()) for k in range(6)]
    cols.append(_lookup(LIFE_EVENTS, st.event))
    cols += [
        pa.array(full.community[rows], pa.int32()),
        pa.array(full.mech_burst[rows], pa.bool_()),
        pa.array(full.mech_shift[rows], pa.bool_()),
        pa.array(full.peer_mask[rows], pa.int32()),
        pa.array(full.routine_wd[rows], pa.int8(), mask=(full.routine_wd[rows] < 0) | (not routine_on)),
        pa.array(full.mech_break[rows], pa.bool_()),
    ]
    return pa.Table.from_arrays(cols, schema=TABLE_SCHEMAS["ground_truth"])


def _transactions_table(tx: _Txns, active_ids: pa.Array) -> pa.Table:
    par = _params()
    cols = [
        active_ids.take(pa.array(tx.row, pa.int64())),
        pa.array(tx.ts, pa.int64()).cast(pa.timestamp("us")),
        pa.array(tx.amount, pa.float64()),
        pa.array(tx.mcc, pa.int16()),
        par.merchant_ids.take(pa.array(tx.merchant, pa.int64())),
    ]
    return pa.Table.from_arrays(cols, schema=TABLE_SCHEMAS["transactions"])


# ------------------------------------------------------------------------------------------------------------
# The panel: month-by-month, chunk-by-chunk
# ------------------------------------------------------------------------------------------------------------


@dataclass
class _ChunkOut:
    tables: dict[str, pa.Table]


@dataclass
class _Stats:
    """Deterministic integer tallies for the manifest (base rates measured while generating)."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, value: int | float) -> None:
        self.counts[key] = self.counts.get(key, 0) + int(value)

    def rates(self) -> dict[str, float]:
        c = self.counts
        cm = max(c.get("customer_months", 0), 1)
        trans = max(c.get("transition_customer_months", 0), 1)
        rates = {
            "inactive_share": c.get("inactive_months", 0) / cm,
            "income_null_share": c.get("income_null", 0) / cm,
            "tenure_null_share": c.get("tenure_null", 0) / cm,
            "suitability_null_share": c.get("suitability_null", 0) / cm,
            "txns_per_customer_month": c.get("transactions", 0) / cm,
            "txns_per_active_customer_month": c.get("transactions", 0) / max(cm - c.get("inactive_months", 0), 1),
            "any_acquisition_share": c.get("any_acquisition", 0) / trans,
            "acquisitions_per_customer_month": c.get("acquisitions", 0) / trans,
            "core_churn_share": c.get("core_churn", 0) / trans,
            "customers_joined_mid_panel_share": c.get("joined", 0) / max(c.get("customers", 1), 1),
            "customers_left_share": c.get("left", 0) / max(c.get("customers", 1), 1),
            "life_event_share": c.get("life_events", 0) / cm,
            "mechanism_burst_share": c.get("mech_burst", 0) / cm,
            "mechanism_shift_share": c.get("mech_shift", 0) / cm,
            "mechanism_peer_share": c.get("mech_peer", 0) / cm,
            "mechanism_break_share": c.get("mech_break", 0) / cm,
        }
        for name in INTENTS:
            rates[f"intent_{name}_active_share"] = c.get(f"intent_{name}", 0) / cm
        for name in PRODUCT_NAMES:
            rates[f"holding_{name}_share"] = c.get(f"hold_{name}", 0) / cm
            rates[f"acquire_{name}_share"] = c.get(f"acq_{name}", 0) / trans
        return {k: round(v, 6) for k, v in rates.items()}


class Panel:
    """The generator's state machine: ``month(m)`` advances every chunk to month m and yields its tables.

    Kept separate from the file writing so that diagnostics (``variance_budget``) replay the exact same
    process without touching disk.
    """

    def __init__(self, config: SyntheticConfig, build_tables: bool = True, record: list | None = None) -> None:
        self.config = config
        self.build_tables = build_tables
        self.record = record
        self.stats = _Stats()
        self.state = _State.empty(config.n_customers)
        self._start_epoch_month = np.datetime64(config.start_month.isoformat()[:7], "M")
        for c, sl in enumerate(self._chunks()):
            st, rng = self.state.chunk(sl), self._rng(0, 0, c)
            _init_attributes(st, config.n_months, rng)
            _init_holdings(st, rng)
            # Communities: a random partition of the chunk into groups of COMMUNITY_SIZE (drawn last, so the
            # rest of the initial state is that of generator v1).
            perm = self._rng(2, 0, c).permutation(sl.stop - sl.start)
            st.community[perm] = sl.start + np.arange(len(perm), dtype=np.int32) // COMMUNITY_SIZE
            crng = self._rng(3, 0, c)
            routine = crng.random(len(perm)) < ROUTINE_SHARE
            st.routine_wd[:] = np.where(routine, crng.integers(0, 7, len(perm)), -1)
        self.stats.add("customers", config.n_customers)
        self.stats.add("joined", int((self.state.join_m > 0).sum()))

    def _chunks(self) -> list[slice]:
        cs, n = self.config.chunk_size, self.config.n_customers
        return [slice(c * cs, min(n, (c + 1) * cs)) for c in range(self.config.n_chunks)]

    def _rng(self, stream: int, m: int, c: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.config.seed, stream, m, c]))

    def month(self, m: int):
        """Advance to month ``m`` (call with 0, 1, 2, ... in order); yields one ``_ChunkOut`` per chunk."""
        month = _Month.of(self.config, m)
        for c, sl in enumerate(self._chunks()):
            yield self._step(
                self.state.chunk(sl), np.arange(sl.start, sl.stop), m, month, self._rng(1, m, c), self._rng(2, m + 1, c),
                self._rng(3, m + 1, c),
            )

    def _step(
        self, st: _State, gidx: np.ndarray, m: int, month: _Month, rng: np.random.Generator, mrng: np.random.Generator,
        crng: np.random.Generator,
    ) -> _ChunkOut:
        par = _params()
        n = len(gidx)
        S = self.stats
        mech = self.config.mechanisms
        satisfied = np.zeros((n, 6), bool)
        acquired_all = np.zeros((n, N_PRODUCTS), bool)
        if m > 0:
            prev_alive = (st.join_m <= m - 1) & ~st.left
            # Leaving: inactive, disloyal customers are likelier to go (absent from this month on).
            dev_loy = st.lat[:, LOY] - POP_LATENT_MEAN[LOY]
            p_leave = _sigmoid(_logit(0.0022) + 1.5 * st.inactive - 0.6 * dev_loy)
            leaving = prev_alive & (rng.random(n) < p_leave)
            st.left[:] |= leaving
            S.add("left", leaving.sum())
            stay = np.flatnonzero(prev_alive & ~leaving)
            acquired, lost = _transition_holdings(st, stay, m, month, rng, self.record)
            S.add("transition_customer_months", len(stay))
            S.add("any_acquisition", acquired.any(1).sum())
            S.add("acquisitions", acquired.sum())
            S.add("core_churn", lost[:, par.core_cols].any(1).sum())
            for j, name in enumerate(PRODUCT_NAMES):
                S.add(f"acq_{name}", acquired[:, j].sum())
            for k, cols in enumerate(par.intent_products):
                satisfied[stay, k] = acquired[:, cols].any(1)
            acquired_all[stay] = acquired
            joining = np.flatnonzero(st.join_m == m)
            _starter_holdings(st, joining, rng)
            _evolve(st, m, rng)
        age_y = _age_years(st, m)
        _update_intents(st, age_y, satisfied, rng)
        # Sibling shift: independent of everything else, ~2.5 months on average.
        u_on, u_off = mrng.random(n), mrng.random(n)
        st.shift[:] = np.where(st.shift, u_off >= SHIFT_END, u_on < SHIFT_ONSET)

        alive_mask = (st.join_m <= m) & ~st.left
        alive = np.flatnonzero(alive_mask)
        sub = _State(**{k: v[alive] for k, v in st.__dict__.items()})
        active = np.flatnonzero(~sub.inactive)
        act = _State(**{k: v[active] for k, v in sub.__dict__.items()})
        broken = (act.routine_wd >= 0) & (crng.random(n)[alive[active]] < BREAK_P)
        tx = _transactions(act, gidx[alive][active], month, self.config.seed, rng, mrng, mech, broken)
        st.last_spend[:] = 0.0
        st.last_spend[alive[active]] = tx.spend
        # What the mechanisms did this month; the transition into m + 1 reads it (like last_spend).
        st.mech_burst[:] = False
        st.mech_burst[alive[active]] = tx.burst
        st.mech_shift[:] = False
        if "hierarchical" in mech:
            st.mech_shift[alive[active]] = act.shift
        st.mech_break[:] = False
        if "cyclic" in mech:
            st.mech_break[alive[active]] = broken
        st.peer_mask[:] = 0
        if "graph" in mech:
            st.peer_mask[:] = _peer_mask(st, gidx[0], acquired_all, alive_mask)
        income_null = sub.income_missing | (rng.random(len(alive)) < 0.012)  # plus month-level gaps

        S.add("customer_months", len(alive))
        S.add("inactive_months", sub.inactive.sum())
        S.add("suitability_null", (sub.suit < 0).sum())
        S.add("tenure_null", sub.tenure_unknown.sum())
        S.add("income_null", income_null.sum())
        S.add("transactions", len(tx.row))
        S.add("life_events", (sub.event != EV_NONE).sum())
        S.add("mech_burst", st.mech_burst.sum())
        S.add("mech_shift", st.mech_shift.sum())
        S.add("mech_peer", (st.peer_mask != 0).sum())
        S.add("mech_break", st.mech_break.sum())
        for k, name in enumerate(INTENTS):
            S.add(f"intent_{name}", (sub.intent[:, k] > 0).sum())
        for j, name in enumerate(PRODUCT_NAMES):
            S.add(f"hold_{name}", sub.hold[:, j].sum())

        tables: dict[str, pa.Table] = {}
        if self.build_tables:
            ids = _customer_ids(gidx[alive])
            tables = {
                "customers": _customers_table(sub, ids, m, month, income_null, self._start_epoch_month),
                "holdings": _holdings_table(sub, ids, month),
                "transactions": _transactions_table(tx, ids.take(pa.array(active, pa.int64()))),
                "ground_truth": _ground_truth_table(sub, ids, month, st, alive, "cyclic" in mech),
            }
        return _ChunkOut(tables)


# ------------------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------------------

# Pinned writer options: part of the byte-identity contract (no timestamps are written by parquet-cpp).
_DICTIONARY_COLUMNS = {
    "customers": ["customer_id", "month", "gender", "province", "channel", "segment", "suitability_profile"],
    "holdings": ["customer_id", "month", *PRODUCT_NAMES],
    "transactions": ["customer_id", "mcc", "merchant_id"],
    "ground_truth": ["customer_id", "month", "persona", "life_event"],
}


def _writer(path: Path, table: str) -> pq.ParquetWriter:
    return pq.ParquetWriter(
        path,
        TABLE_SCHEMAS[table],
        compression="zstd",
        compression_level=1,
        use_dictionary=_DICTIONARY_COLUMNS[table],
        write_statistics=True,
        version="2.6",
        data_page_version="1.0",
        write_page_index=False,
        write_page_checksum=False,
        store_schema=True,
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def month_file(out_dir: Path, table: str, month: date) -> Path:
    """Landing path of one table-month: ``out_dir/<table>/month=YYYY-MM-01.parquet``."""
    return Path(out_dir) / table / f"month={month.isoformat()}.parquet"


def _write_month(panel: Panel, m: int, month: date, out_dir: Path) -> dict[str, dict]:
    """Stream one month to its four files (``*.tmp`` then ``os.replace``); one row group per chunk (parquet
    splits a chunk above 1Mi rows), so memory holds one chunk of transactions at a time."""
    paths = {t: month_file(out_dir, t, month) for t in TABLES}
    tmps = {t: p.with_name(p.name + ".tmp") for t, p in paths.items()}
    writers = {t: _writer(tmps[t], t) for t in TABLES}
    rows = dict.fromkeys(TABLES, 0)
    try:
        for chunk in panel.month(m):
            for t, tab in chunk.tables.items():
                if tab.num_rows:
                    writers[t].write_table(tab, row_group_size=tab.num_rows)
                    rows[t] += tab.num_rows
    except BaseException:
        for t in TABLES:
            writers[t].close()
            tmps[t].unlink(missing_ok=True)
        raise
    out = {}
    for t in TABLES:
        writers[t].close()
        os.replace(tmps[t], paths[t])
        rel = str(paths[t].relative_to(out_dir))
        out[rel] = {"table": t, "month": month.isoformat(), "rows": rows[t], "sha256": _sha256(paths[t])}
    return out


def _remove_stale(out_dir: Path, keep: set[str]) -> None:
    """The landing zone must equal the manifest: drop month files of an earlier, longer run and tmp leftovers."""
    for t in TABLES:
        for p in (out_dir / t).glob("month=*"):
            if str(p.relative_to(out_dir)) not in keep:
                p.unlink()


def generate(config: SyntheticConfig, out_dir: Path, progress: Callable[[str], None] | None = None) -> dict:
    """Write the synthetic panel to ``out_dir`` and return a summary (the manifest plus wall time).

    The manifest (``out_dir/manifest.json``) holds the config, every file's row count and sha256, totals
    and the base rates measured during generation; it is itself deterministic.
    """
    out_dir = Path(out_dir)
    for t in TABLES:
        (out_dir / t).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    panel = Panel(config)
    files: dict[str, dict] = {}
    for m, month in enumerate(config.months):
        tm = time.perf_counter()
        written = _write_month(panel, m, month, out_dir)
        files.update(written)
        if progress:
            n = {v["table"]: v["rows"] for v in written.values()}
            progress(
                f"{month:%Y-%m}: {n['customers']:,} customers, {n['transactions']:,} transactions"
                f" ({time.perf_counter() - tm:.1f}s)"
            )
    _remove_stale(out_dir, set(files))
    totals = {t: sum(v["rows"] for v in files.values() if v["table"] == t) for t in TABLES}
    manifest = {
        "generator": GENERATOR_VERSION,
        "config": config.to_json(),
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "tables": list(TABLES),
        "files": dict(sorted(files.items())),
        "total_rows": totals,
        "rates": panel.stats.rates(),
    }
    tmp = out_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, out_dir / "manifest.json")
    return {**manifest, "seconds": round(time.perf_counter() - t0, 3), "out_dir": str(out_dir)}


# ------------------------------------------------------------------------------------------------------------
# Diagnostics: the variance budget of the acquisition labels
# ------------------------------------------------------------------------------------------------------------


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    from scipy.stats import rankdata

    pos = label.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _explained(score: np.ndarray, label: np.ndarray, bins: int = 50) -> float:
    """Share of the label's variance explained by E[label | score], estimated on score quantile bins."""
    var = label.var()
    if var == 0:
        return float("nan")
    edges = np.unique(np.quantile(score, np.linspace(0, 1, bins + 1)[1:-1]))
    b = np.searchsorted(edges, score)
    mean_b = np.bincount(b, weights=label) / np.maximum(np.bincount(b), 1)
    return float(mean_b[b].var() / var)


def variance_budget(config: SyntheticConfig, months: int | None = None) -> dict:
    """Replay the panel (no files) and split the acquisition hazard by information source.

    For every (customer, product) not yet held, the acquisition logit is base + observable + latent + intent
    + mechanism (the planted mechanisms, §4.1) + noise. Reported per task group (``will_acquire_<group>`` and ``any``): each component's share of the
    logit variance, the AUC and the share of label variance explained when predicting with increasing
    information (observable only; + latent state; + intents; + mechanisms = everything but noise; the true
    hazard).
    The remainder to 1 of the last is the irreducible Bernoulli noise of a monthly event.
    """
    record: list[TransitionRecord] = []
    cfg = config if months is None else SyntheticConfig(**{**config.__dict__, "n_months": months})
    panel = Panel(cfg, build_tables=False, record=record)
    for m in range(cfg.n_months):
        for _ in panel.month(m):
            pass
    cat = {
        k: np.concatenate([getattr(r, k) for r in record]).astype(bool if k in ("held", "acquired") else np.float64)
        for k in TransitionRecord.__dataclass_fields__
    }
    comps = ("observable", "latent", "intent", "mechanism", "noise")
    mean = {k: (cat[k] * ~cat["held"]).sum(0) / np.maximum((~cat["held"]).sum(0), 1) for k in comps}

    def p_of(parts: tuple[str, ...]) -> np.ndarray:
        logit = cat["base"] + sum(cat[k] if k in parts else mean[k] for k in comps)
        return np.where(cat["held"], 0.0, _sigmoid(logit))

    info = {
        "observable": p_of(("observable",)),
        "observable+latent": p_of(("observable", "latent")),
        "observable+latent+intent": p_of(("observable", "latent", "intent")),
        "observable+latent+intent+mechanism": p_of(("observable", "latent", "intent", "mechanism")),
        "true_hazard": p_of(comps),
    }
    groups = {g: _pcols(PRODUCTS_BY_GROUP[g]) for g in ("deposits", "investments", "accounts", "lending", "payments")}
    groups["any"] = np.arange(N_PRODUCTS)
    free = ~cat["held"]
    out: dict = {"customer_months": int(len(cat["held"])), "groups": {}}
    total = sum(cat[k] for k in comps)
    out["logit_variance_share"] = {k: round(float(cat[k][free].var() / total[free].var()), 3) for k in comps}
    for g, cols in groups.items():
        label = cat["acquired"][:, cols].any(1).astype(np.float64)
        row = {"rate": round(float(label.mean()), 5)}
        for name, p in info.items():
            score = 1.0 - np.prod(1.0 - p[:, cols], axis=1)
            row[f"auc[{name}]"] = round(_auc(score, label), 4)
            row[f"r2[{name}]"] = round(_explained(score, label), 4)
        out["groups"][g] = row
    return out


# ------------------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ple_platform.core.data.synthetic", description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=5000)
    ap.add_argument("--months", type=int, default=17)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--start", default="2015-01", help="first month, YYYY-MM")
    ap.add_argument("--chunk-size", type=int, default=50_000)
    ap.add_argument("--out", type=Path, help="landing folder")
    ap.add_argument("--variance-budget", action="store_true", help="print the variance budget instead of writing")
    args = ap.parse_args(argv)
    y, mo = (int(x) for x in args.start.split("-")[:2])
    config = SyntheticConfig(args.customers, date(y, mo, 1), args.months, args.seed, args.chunk_size)
    if args.variance_budget:
        print(json.dumps(variance_budget(config), indent=2))
        return 0
    if args.out is None:
        ap.error("--out is required")
    summary = generate(config, args.out, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    cm = summary["total_rows"]["customers"]
    tx = summary["total_rows"]["transactions"]
    sec = summary["seconds"]
    report = {
        "seconds": sec,
        "customer_months": cm,
        "transactions": tx,
        "customer_months_per_s": round(cm / sec, 1),
        "transactions_per_s": round(tx / sec, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "rates": summary["rates"],
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
