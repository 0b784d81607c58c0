"""Compatibility sweep: every mmnorm norm in the toolboxes' own shipped configs.

For each config (read from the installed mmseg / mmdet ``.mim/configs``, pretrained weights off) and
each norm, every BN / SyncBN ``norm_cfg`` of the model is replaced by the norm and the model goes
through build, SyncBN convert + revert, strict load of the BN model's state dict, a training loss +
backward on synthetic 64x64 images, predict and ``recalibrate_bn``
(``mmnorm/analysis/compat_cases.py``). ``BN`` (the config as shipped) is the reference column.

    python tools/analysis/compat_sweep.py [--configs mmseg:fcn/... ...] [--norms BN IBN RN] [--fast]
    --out r.jsonl python tools/analysis/compat_sweep.py --table r.jsonl [--markdown
    docs/compatibility.md]

Each case prints one JSON line (``scope, config, norm, status, step, error, layers, seconds``); with
``--out`` the lines are appended there and cases already in the file are skipped (a sweep can be
resumed). Exit status: 1 if a case ``FAIL``-ed (an error mmnorm should have handled or named), else
0.
"""
import argparse
import json
import os
import os.path as osp
import sys
from typing import List

from mmnorm_tools.compat_cases import run_case
from mmnorm_tools.compat_configs import DET_CONFIGS, FAST_CASES, NORMS, SEG_CONFIGS

COLUMNS = ('BN', ) + NORMS
MARK = {'pass': 'pass', 'named': 'named error', 'FAIL': '**FAIL**'}


def all_cases(norms=COLUMNS, fast=False):
    """``(scope, config, norm)`` config by config (all norms of a config in a row)."""
    configs = FAST_CASES if fast else [('mmseg', n) for n in SEG_CONFIGS] + [('mmdet', n)
                                                                             for n in DET_CONFIGS]
    return [(scope, name, norm) for scope, name in configs for norm in norms]


def counts_table(records: List[dict], norms) -> List[str]:
    lines = ['| norm | pass | named error | FAIL | cases |', '|---|---:|---:|---:|---:|']
    for norm in norms:
        rs = [r for r in records if r['norm'] == norm]
        lines.append(f'| {norm} | ' +
                     ' | '.join(str(sum(r['status'] == s for r in rs))
                                for s in MARK) + f' | {len(rs)} |')
    return lines


def markdown(records: List[dict]) -> str:
    """Counts per norm, the config x norm table, and the reason of every non-pass (numbered)."""
    norms = sorted({r['norm']
                    for r in records},
                   key=lambda n: COLUMNS.index(n) if n in COLUMNS else 99)
    configs = list(dict.fromkeys((r['scope'], r['config']) for r in records))
    by = {(r['scope'], r['config'], r['norm']): r for r in records}
    lines = ['| toolbox | config | ' + ' | '.join(norms) + ' |', '|---|---|' + '---|' * len(norms)]
    notes = []
    for scope, config in configs:
        cells = []
        for norm in norms:
            r = by.get((scope, config, norm))
            if r is None:
                cells.append('–')
                continue
            cell = MARK[r['status']]
            if r['status'] != 'pass':
                notes.append(f'`{config}` × {norm} ({r["step"]}): {r["error"][:400]}')
                cell += f' ({r["step"]}) [{len(notes)}]'
            cells.append(cell)
        lines.append(f'| {scope} | `{config}` | ' + ' | '.join(cells) + ' |')
    reasons = ['', 'Reasons:', ''] + [f'{i + 1}. {n}' for i, n in enumerate(notes)] if notes else []
    return '\n'.join(counts_table(records, norms) + [''] + lines + reasons) + '\n'


BEGIN, END = '<!-- compat_sweep table: begin -->', '<!-- compat_sweep table: end -->'


def write_between_markers(path: str, text: str) -> None:
    """Writes ``text`` between the BEGIN / END marker lines of ``path`` (the rest of the file is
    kept), or the whole file with the markers if it has none."""
    block = f'{BEGIN}\n{text}{END}\n'
    old = open(path).read() if osp.exists(path) else ''
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip('\n')
        new = head + block + ('\n' + tail if tail else '')
    else:
        new = old + ('\n' if old else '') + block
    with open(path, 'w') as f:
        f.write(new)


def read_records(path: str) -> List[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--configs',
        nargs='*',
        help='scope:config names, e.g. mmseg:fcn/fcn_r50-d8_...py '
        '(default: all)')
    parser.add_argument('--norms', nargs='*', default=list(COLUMNS), choices=COLUMNS)
    parser.add_argument(
        '--fast', action='store_true', help='only the default test subset of configs')
    parser.add_argument(
        '--out',
        help='append one JSON line per case to this file (cases already in it are skipped)')
    parser.add_argument('--table', help='read this JSON-lines file and print the markdown table')
    parser.add_argument(
        '--markdown',
        help='with --table: write the table into this file (between its '
        'compat_sweep marker lines, the rest kept) instead of printing it')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from mmengine.logging import MMLogger
    if not MMLogger.check_instance_created(
            'compat_sweep'):  # the current logger: no init_weights dumps
        MMLogger.get_instance('compat_sweep', log_level='WARNING')
    if args.table:
        text = markdown(read_records(args.table))
        if args.markdown:
            write_between_markers(args.markdown, text)
        else:
            print(text, end='')
        return 0
    cases = all_cases(args.norms, args.fast)
    if args.configs:
        wanted = {tuple(c.split(':', 1)) for c in args.configs}
        unknown = wanted - {c[:2] for c in all_cases(args.norms)}
        if unknown:
            raise SystemExit(f'--configs: not in the sweep: {sorted(":".join(u) for u in unknown)}')
        cases = [c for c in cases if c[:2] in wanted]
    done = set()
    if args.out and osp.exists(args.out):
        done = {(r['scope'], r['config'], r['norm']) for r in read_records(args.out)}
    failed = False
    for scope, name, norm in cases:
        if (scope, name, norm) in done:
            continue
        record = dict(scope=scope, config=name, norm=norm, **run_case(scope, name, norm))
        failed |= record['status'] == 'FAIL'
        print(json.dumps(record), flush=True)
        if args.out:
            with open(args.out, 'a') as f:
                f.write(json.dumps(record) + os.linesep)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
