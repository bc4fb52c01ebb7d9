"""Read a kernel's SASS: the instructions of its time loop, by class, and the chains that bound a step.

Supports: the text of ``cuobjdump -sass`` for sm_90 (as shipped in the triton 3.6 / 3.9 wheels).
Tested on: the Triton LSTM kernels compiled on CPU (tests/test_static.py). Known risk: the loop finder
relies on the time loop being the outermost backward branch that contains the step synchronisation's
global atomic (REDG/ATOMG); a compiler that splits the loop differently makes ``time_loop`` raise.

A step of a persistent kernel is one trip around its time loop. What it costs, read from the code:
- the instructions one warp issues per trip, by class (``CLASSES``);
- the longest chain of dependent tensor-core MMAs (each HMMA waits for the accumulator of the last);
- the global loads, stores and atomics, with their widths (bytes per thread);
- the shared-memory wavefronts (LDS, LDSM, STS: 128 bytes each, the SM's shared-memory bandwidth per cycle):
  operands of tl.dot staged in shared memory are re-read every step, W_hh included;
- the step synchronisation: its inner poll loop (executed at least once) and the serial L2 round trips
  before it (an atomic whose result the program waits for, then the poll that sees the last arrival).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

# instruction classes, in the order a report prints them
CLASSES = {
    "mma": ("HMMA", "HGMMA", "IMMA", "DMMA", "QGMMA"),
    "fma": ("FFMA", "FMUL", "FADD", "HFMA2", "HMUL2", "HADD2", "DFMA", "DMUL", "DADD", "FMNMX", "FSEL", "FSETP"),
    "mufu": ("MUFU",),
    "shfl": ("SHFL",),
    "ldg": ("LDG",),
    "stg": ("STG",),
    "atom": ("ATOMG", "REDG", "ATOM", "RED"),
    "lds": ("LDS", "LDSM"),
    "sts": ("STS",),
    "bar": ("BAR",),
    "local": ("LDL", "STL"),                            # spill traffic
    "fence": ("MEMBAR", "FENCE", "ERRBAR", "CGAERRBAR", "CCTL"),
}
_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Za-z0-9_]+)*)\s*([^;]*);")
_WGMMA_SHAPE = re.compile(r"\.(\d+)x(\d+)x(\d+)")


@dataclass
class Instr:
    addr: int
    op: str             # opcode without modifiers, e.g. "LDG"
    mods: str           # ".E.128.STRONG.GPU"
    operands: str
    pred: str

    @property
    def cls(self) -> str:
        for name, ops in CLASSES.items():
            if self.op in ops:
                return name
        return "other"

    def width(self) -> int:
        """Bytes per thread of a memory instruction (32-bit unless the modifiers say otherwise)."""
        for bits, nbytes in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
            if bits in self.mods:
                return nbytes
        return 4

    def _wgmma(self) -> tuple[int, int, int, int, bool] | None:
        """HGMMA (Hopper's warpgroup MMA): (M, N, K, operand bytes, A read from shared memory)."""
        m = _WGMMA_SHAPE.match(self.mods) if self.op == "HGMMA" else None
        if not m:
            return None
        e = 4 if ".TF32" in self.mods else 1 if (".E4M3" in self.mods or ".E5M2" in self.mods) else 2
        a_smem = self.operands.split(",")[1].strip().startswith("gdesc")
        return int(m.group(1)), int(m.group(2)), int(m.group(3)), e, a_smem

    def mma_units(self) -> float:
        """Tensor-core work of one warp's MMA in HMMA.16816 equivalents (2048 FMA of 16-bit operands: an
        m16n8k16, or an m16n8k8 of tf32 at half the rate). An HGMMA is issued by the 4 warps of a warpgroup,
        each listing it: a quarter of its M·N·K per warp."""
        w = self._wgmma()
        if w is None:
            return 1.0 if self.cls == "mma" else 0.0
        M, N, K, e, _ = w
        return M * N * K * e / 4 / 4096

    def smem_wavefronts(self) -> float:
        """128-byte shared-memory wavefronts of one warp's LDS / LDSM / STS, bank conflicts and broadcasts
        not modeled (ldmatrix .x4 moves 16 bytes per thread: 4 wavefronts; .x2 2; .x1 1). An HGMMA reads its
        B operand (and A, when given by a descriptor) from shared memory once per warpgroup: a quarter of
        those bytes per warp."""
        w = self._wgmma()
        if w is not None:
            M, N, K, e, a_smem = w
            return (N * K * e + (M * K * e if a_smem else 0)) / 4 / 128
        if self.op == "LDSM":
            per_thread = 16 if self.mods.endswith(".4") else 8 if self.mods.endswith(".2") else 4
        elif self.op in ("LDS", "STS"):
            per_thread = self.width()
        else:
            return 0
        return max(1, per_thread * 32 // 128)

    def branch_target(self) -> int | None:
        if self.op != "BRA":
            return None
        m = re.match(r"\s*(0x[0-9a-f]+)", self.operands)
        return int(m.group(1), 16) if m else None


def parse(sass: str, function: str | None = None) -> list[Instr]:
    """The instructions of one function of ``cuobjdump -sass`` output (the first, or the one named)."""
    if function is not None:
        start = sass.index(f"Function : {function}")
        sass = sass[start:]
        nxt = sass.find("Function :", 10)
        sass = sass if nxt < 0 else sass[:nxt]
    out = []
    for m in _LINE.finditer(sass):
        addr, pred, op, mods, operands = m.groups()
        out.append(Instr(int(addr, 16), op, mods or "", operands.strip(), (pred or "").strip()))
    return out


def loops(code: list[Instr]) -> list[tuple[int, int]]:
    """Every backward branch as (target address, branch address): a loop's first and last instruction."""
    return [(ins.branch_target(), ins.addr) for ins in code
            if ins.branch_target() is not None and ins.branch_target() <= ins.addr]


def _is_sync_atomic(ins: Instr) -> bool:
    return ins.op in ("REDG", "ATOMG") or (ins.op == "LDG" and _is_strong(ins))


def _is_strong(ins: Instr) -> bool:
    """A load that goes to L2 for data another program wrote: .cg (STRONG.GPU) or volatile (STRONG.SYS)."""
    return ".STRONG.GPU" in ins.mods or ".STRONG.SYS" in ins.mods


def _exit_branch(body: list[Instr], first: int, last: int) -> int:
    """The address of the first branch inside the loop (first, last) that leaves it (a conditional BRA with a
    target outside), or first - 1 where there is none."""
    for ins in body:
        if first <= ins.addr <= last and ins.op == "BRA":
            m = re.search(r"0x([0-9a-f]+)", ins.operands)
            if m and not first <= int(m.group(1), 16) <= last:
                return ins.addr
    return first - 1


def _is_data_poll(ins: Instr) -> bool:
    """A volatile load (STRONG.SYS): the polled exchange polls the data itself, so its round trip is the
    step synchronisation's, not an exchange round of its own."""
    return ins.op == "LDG" and ".STRONG.SYS" in ins.mods


@dataclass
class Step:
    """One trip around the time loop, as one warp issues it."""
    counts: dict = field(default_factory=dict)          # class → instructions (poll loop once)
    mma_chain: int = 0                                  # longest chain of dependent MMAs
    load_bytes: int = 0                                 # global bytes loaded per thread (poll excluded)
    store_bytes: int = 0                                # global bytes stored per thread
    smem_wavefronts: float = 0                          # 128-byte shared-memory wavefronts (LDS/LDSM/STS/HGMMA)
    mma_units: float = 0                                # tensor-core work in HMMA.16816 equivalents
    poll: dict = field(default_factory=dict)            # the poll loop's instructions by class, one trip
    sync_round_trips: int = 0                           # serial L2 round trips of the step synchronisation
    fences: int = 0                                     # MEMBAR.GPU on the step's path
    instructions: int = 0
    load_phases: list = field(default_factory=list)     # serial rounds of loads the step waits for: "l2" | "dram"
    inner_loops: int = 0                                # loops inside the step other than the poll (tile loops)
    tile_trips: int = 1                                 # how often those ran (batch tiles), 1 without any


def time_loop(code: list[Instr]) -> tuple[int, int]:
    """The outermost loop that contains the step synchronisation (a REDG/ATOMG, or the block barrier of a
    one-program grid): (first address, last address)."""
    syncs = [i.addr for i in code if i.op in ("REDG", "ATOMG")] or [i.addr for i in code if i.op == "BAR"]
    best = None
    for lo, hi in loops(code):
        if any(lo <= a <= hi for a in syncs) and (best is None or hi - lo > best[1] - best[0]):
            best = (lo, hi)
    if best is None:
        raise ValueError("no loop around the step synchronisation found in the SASS")
    return best


def mma_chain(body: list[Instr]) -> int:
    """Longest chain of MMAs in which each one accumulates onto the result of an earlier one. HGMMA is left
    out: warpgroup MMAs are asynchronous, and those on one accumulator issue back to back (the tensor cores
    pipeline the dependency until a wait), so their cost is their issue rate (``mma_units``)."""
    depth: dict[str, int] = {}
    longest = 0
    for ins in body:
        if ins.cls != "mma" or ins.op == "HGMMA":
            continue
        regs = [r.strip() for r in ins.operands.split(",")]
        dst, acc = regs[0], regs[-1]
        d = depth.get(acc, 0) + 1 if acc != "RZ" else 1
        depth[dst] = d
        longest = max(longest, d)
    return longest


_REG = re.compile(r"\bR(\d+)\b")


def _dest_regs(ins: Instr) -> set[int]:
    """The registers a load writes: its first operand, widened by the access width (R8 of a .128 is R8-R11)."""
    m = _REG.match(ins.operands.split(",")[0].strip())
    if not m:
        return set()
    first = int(m.group(1))
    return set(range(first, first + max(1, ins.width() // 4)))


def _source_regs(ins: Instr) -> set[int]:
    parts = ins.operands.split(",")
    srcs = parts if ins.op in ("STG", "STS", "REDG", "RED", "BAR") else parts[1:]
    return {int(r) for p in srcs for r in _REG.findall(p)}


def load_phases(body: list[Instr], sync_at: int, poll_end: int) -> list[str]:
    """The serial rounds of global loads a step waits for, on each side of the synchronisation (between the
    loop's start and it, and between it and the loop's end). Within a side, a round is the loads issued
    since the last wait: the first instruction that reads a register one of them writes waits for them,
    and a load issued after that wait is a round of its own (its request leaves only once the earlier data
    came back: h in pieces, each staged and consumed before the next piece's load is issued, is one L2 round
    trip per piece). A load consumed only after its side (a prefetch for the next step) waits for nothing. A
    round is "l2" when all its loads are .cg (STRONG.GPU: data another program just wrote, an L2 hit), else
    "dram" (streamed data: gates_x, saved activations, dy). Volatile loads (a polled exchange polling the
    data) are the synchronisation's round trip, not a round here."""
    phases = []
    for lo, hi in ((body[0].addr, sync_at), (poll_end, body[-1].addr)):
        side = [(i, ins) for i, ins in enumerate(body) if lo <= ins.addr < hi]
        used_here = lambda i, regs: any(regs & _source_regs(u) for u in body[i + 1:] if u.addr < hi)  # noqa: E731
        pending: list[tuple[set, str]] = []            # loads of the open round: (registers, kind)
        for i, ins in side:
            srcs = _source_regs(ins)
            if pending and any(regs & srcs for regs, _ in pending):      # waits: the open round is done
                phases.append("dram" if any(k == "dram" for _, k in pending) else "l2")
                pending = []
            if ins.op == "LDG" and not _is_data_poll(ins):
                regs = _dest_regs(ins)
                if used_here(i, regs):
                    pending.append((regs, "l2" if _is_strong(ins) else "dram"))
        if pending:                                     # consumed only by what a later round's wait covers
            phases.append("dram" if any(k == "dram" for _, k in pending) else "l2")
    return phases


def read_step(code: list[Instr], inner_trips: int = 1, loop: tuple[int, int] | None = None) -> Step:
    """One step of the time loop (or of ``loop``, (first, last) address). ``inner_trips``: how often the loops
    nested inside it (other than the poll) run per step, e.g. the number of batch tiles; their instructions and
    bytes count that often."""
    lo, hi = loop or time_loop(code)
    body = [i for i in code if lo <= i.addr <= hi]
    inner = [(a, b) for a, b in loops(body) if (a, b) != (lo, hi)]
    polls = [(a, b) for a, b in inner if any(_is_sync_atomic(i) for i in body if a <= i.addr <= b)
             and not any(i.cls == "mma" or i.op == "STG" for i in body if a <= i.addr <= b)]
    # a data poll's loop (volatile loads, the polled exchanges) opens with the check of the try before it, up to
    # the branch that leaves the loop: that part runs every step; the reloads after it only while waiting
    data_polls = [(a, b) for a, b in polls if any(_is_data_poll(i) for i in body if a <= i.addr <= b)]
    checks = [(a, _exit_branch(body, a, b)) for a, b in data_polls]
    in_check = lambda ins: any(a <= ins.addr <= e for a, e in checks)   # noqa: E731
    in_poll = lambda ins: any(a <= ins.addr <= b for a, b in polls) and not in_check(ins)   # noqa: E731
    tiles = [(a, b) for a, b in inner if (a, b) not in polls]
    trips = lambda ins: inner_trips if any(a <= ins.addr <= b for a, b in tiles) else 1   # noqa: E731
    step = Step(inner_loops=len(tiles))
    for ins in body:
        if in_poll(ins):
            step.poll[ins.cls] = step.poll.get(ins.cls, 0) + 1
            continue
        n = trips(ins)
        step.counts[ins.cls] = step.counts.get(ins.cls, 0) + n
        if ins.op == "LDG":                             # .cg (STRONG.GPU) loads of h/dz included
            step.load_bytes += n * ins.width()
        elif ins.op == "STG":
            step.store_bytes += n * ins.width()
        elif ins.op == "MEMBAR" and "GPU" in ins.mods + ins.operands:
            step.fences += 1
        step.smem_wavefronts += n * ins.smem_wavefronts()
        step.mma_units += n * ins.mma_units()
    # a counter's poll loop runs at least once (its first poll is the loop's); a data poll's reloads (after its
    # check, counted above) run only while the data is not there: waiting, the synchronisation's time, not issue
    # slots of a step whose data is in time
    if not data_polls:
        for k, v in step.poll.items():
            step.counts[k] = step.counts.get(k, 0) + v
    step.instructions = sum(step.counts.values())
    step.mma_chain = mma_chain(body)
    # serial round trips: atomics whose result the program waits for (ATOMG with a destination; a REDG
    # does not wait), plus one per poll loop (a strong load or atomic in a loop, observing the last arrival
    # or, polled, the data itself): a poll loop is left only once its data came back, so the next one's
    # first load leaves after that (h polled piece by piece is one L2 round trip per piece)
    waited = sum(1 for i in body if not in_poll(i) and i.op == "ATOMG" and not i.operands.startswith("RZ"))
    step.sync_round_trips = waited + len(polls)
    step.tile_trips = inner_trips if tiles else 1
    # the synchronisation starts at the arrival atomic, or (a polled exchange: no atomic) at the data poll
    sync_at = next((i.addr for i in body if i.op in ("REDG", "ATOMG") and not in_poll(i)),
                   min((a for a, _ in polls), default=hi))
    poll_end = max((b for _, b in polls), default=sync_at)
    step.load_phases = load_phases(body, sync_at, poll_end)
    return step
