import torch

from corral.engine.request import Request


class TokenHistory:
    """The token ids (prompt, then outputs) of each request whose sampling penalizes what it has seen, on
    the device, one row per request. The sampler writes each token it samples into its request's row, so a
    step launched before the host has the last token (async scheduling) still penalizes it. Row 0 stays
    empty: the rows of requests without penalties point there."""

    def __init__(self, max_model_len: int, device: torch.device, num_rows: int = 64):
        self.max_model_len = max_model_len
        self.device = device
        self.num_rows = num_rows
        self.release()

    def rows(self, requests: list[Request], num_tokens: list[int], penalized: list[bool]) -> list[int]:
        """The row of each request (0 where not `penalized`), each holding its first `num_tokens` ids:
        the host writes those it has and the row lacks (a new request's prompt)."""
        if self.tokens is None:
            self.tokens = torch.zeros(self.num_rows, self.max_model_len, dtype=torch.int32, device=self.device)
        in_step = {id(r) for r in requests}  # their rows stay theirs, finished or not: this step records into them
        rows = []
        for request, n, wanted in zip(requests, num_tokens, penalized):
            if not wanted:
                rows.append(0)
                continue
            row = self._row(request, in_step)
            if self.known[row] < n:
                if request.num_tokens < n:
                    raise RuntimeError(f"request {request.request_id}: its row lacks tokens the host does not have")
                ids = request.all_token_ids[self.known[row]:n]
                self.tokens[row, self.known[row]:n] = torch.tensor(ids, dtype=torch.int32).to(self.device,
                                                                                           non_blocking=True)
                self.known[row] = n
            rows.append(row)
        return rows

    def record(self, rows: list[int], num_tokens: list[int], sampled: torch.Tensor):
        """Write each penalized row's sampled token after its first `num_tokens` ids."""
        picked = [i for i, (row, n) in enumerate(zip(rows, num_tokens)) if row and n < self.max_model_len]
        if not picked:
            return
        index = torch.tensor([[rows[i] for i in picked], [num_tokens[i] for i in picked], picked])
        index = index.to(self.device, non_blocking=True)
        self.tokens[index[0], index[1]] = sampled[index[2]].to(torch.int32)
        for i in picked:
            self.known[rows[i]] = num_tokens[i] + 1

    def release(self):
        """Drop the device rows of an idle engine (no step holds them); the next penalized request
        allocates them again."""
        self.tokens: torch.Tensor | None = None  # [rows, max_model_len], from the first penalized request on
        self.owners: list[Request | None] = [None] * self.num_rows
        self.known = [0] * self.num_rows  # leading ids of each row written, by the host or by the sampler
        self.row_of: dict[int, int] = {}  # by id() of a request: its owner entry keeps that id its own

    def _row(self, request: Request, in_step: set[int]) -> int:
        if (row := self.row_of.get(id(request))) is not None:
            return row
        if (free := self._free_row()) is None:
            for r, owner in enumerate(self.owners):
                if owner is not None and owner.status.finished and id(owner) not in in_step:
                    del self.row_of[id(owner)]
                    self.owners[r] = None
            free = self._free_row()
        if free is None:
            free = len(self.owners)
            self.tokens = torch.cat([self.tokens, torch.zeros_like(self.tokens)])
            self.owners += [None] * len(self.owners)
            self.known += [0] * len(self.known)
        self.owners[free], self.known[free] = request, 0
        self.row_of[id(request)] = free
        return free

    def _free_row(self) -> int | None:
        return next((r for r in range(1, len(self.owners)) if self.owners[r] is None), None)
