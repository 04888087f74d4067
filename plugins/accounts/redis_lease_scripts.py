"""The Redis scripts of leases (``redis_leases.py``): ``LEASE`` takes them, ``GIVE_BACK`` gives a
pool's holds back (a rule's unused units go back by ``ADJUST``: ``redis_scripts.py``)."""

from __future__ import annotations

from . import redis_scripts as lua

# Take leases, all or none. KEYS: (the account, its holds, when ARGV[3] > 0), then one TAT key per
# rule. ARGV: ttl ms, now (the caller's clock, as ADMIT's), holds wanted (0: no credit part), each
# hold's amount, fewest holds, share of the free balance, the wanted holds' members, then the
# number of rules and per rule: interval, period, units wanted, fewest units, share of its room.
# Reply: {1, bal, res, holds granted, per rule: units granted, its state after} or {0, bal, res}
# (nothing taken: not enough room, or an account Redis does not have yet: the exact path seeds it).
LEASE = lua._NOW_MS + lua._FREE_EXPIRED_HOLDS + """
local ttl, at = tonumber(ARGV[1]), tonumber(ARGV[2])
local want, amount = tonumber(ARGV[3]), tonumber(ARGV[4])
local a, kk, k, bal, res = 7 + want, 1, 0, 0, 0
if want > 0 then
  if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0, 0} end
  free_expired_holds(KEYS[1], KEYS[2])
  bal = tonumber(redis.call('HGET', KEYS[1], 'bal'))
  res = tonumber(redis.call('HGET', KEYS[1], 'res'))
  k = math.floor((bal - res) / tonumber(ARGV[6]) / amount)
  if k > want then k = want end
  if k < tonumber(ARGV[5]) then return {0, bal, res} end
  kk = 3
end
local m = tonumber(ARGV[a])
local new, units = {}, {}
for i = 1, m do
  local b = a + 1 + 5 * (i - 1)
  local interval = tonumber(ARGV[b])
  local raw = redis.call('GET', KEYS[kk + i - 1])
  local debt = 0
  if raw then
    local was, owed = string.match(raw, '^(%S+) (%S+)$')
    debt = tonumber(owed) - (at - tonumber(was))
    if debt < 0 then debt = 0 end
  end
  local n = math.floor((tonumber(ARGV[b + 1]) - debt) / interval / tonumber(ARGV[b + 4]))
  if n > tonumber(ARGV[b + 2]) then n = tonumber(ARGV[b + 2]) end
  if n < tonumber(ARGV[b + 3]) then return {0, bal, res} end
  new[i], units[i] = debt + n * interval, n
end
local out = {1, bal, res, k}
if k > 0 then
  for j = 1, k do redis.call('ZADD', KEYS[2], now + ttl, ARGV[6 + j]) end
  out[3] = redis.call('HINCRBY', KEYS[1], 'res', k * amount)
end
for i = 1, m do
  local text = ARGV[2] .. ' ' .. string.format('%.17g', new[i])
  redis.call('SET', KEYS[kk + i - 1], text, 'PX', math.ceil(new[i] * 1000) + 1000)
  out[3 + 2 * i] = string.format('%.17g', units[i])
  out[4 + 2 * i] = text
end
return out
"""

# Give pooled holds back. KEYS: the account, its holds. ARGV: members. Reply: the amount freed.
GIVE_BACK = """
local freed = 0
for i = 1, #ARGV do
  if redis.call('ZREM', KEYS[2], ARGV[i]) == 1 then freed = freed + tonumber(string.match(ARGV[i], '|(%d+)$')) end
end
if freed > 0 then redis.call('HINCRBY', KEYS[1], 'res', -freed) end
return freed
"""
