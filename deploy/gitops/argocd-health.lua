-- Argo CD resource health for writeback.dental.dev/PracticeWriteback (docs/gitops.md shows the
-- argocd-cm entry). Argo CD runs this with the live object as `obj` and reads back `hs`.
--   Progressing  the operator has not reported on the current generation yet, or says it is
--                still working (Reconciling=True, Ready Unknown, pollers starting)
--   Suspended    spec.suspend is true (condition Suspended=True): nothing runs, on purpose
--   Degraded     Stalled=True, or Ready=False for any other reason (its message says the fix)
--   Healthy      Ready=True for the current generation
local hs = {}

local function conditions(o)
  local byType = {}
  if o.status ~= nil and o.status.conditions ~= nil then
    for _, c in ipairs(o.status.conditions) do
      if c.type ~= nil then
        byType[c.type] = c
      end
    end
  end
  return byType
end

local function describe(c)
  local text = c.reason or c.type
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

-- Ready=False reasons that mean "not there yet" rather than "broken".
local transient = { PollersStarting = true, NotChecked = true }

local generation = obj.metadata and obj.metadata.generation or nil
local observed = obj.status and obj.status.observedGeneration or nil
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report a status"
  return hs
end
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
    .. " (status is for " .. tostring(observed or "none") .. ")"
  return hs
end

local c = conditions(obj)
if c.Stalled ~= nil and c.Stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(c.Stalled)
  return hs
end
if (c.Suspended ~= nil and c.Suspended.status == "True")
    or (obj.spec ~= nil and obj.spec.suspend == true) then
  hs.status = "Suspended"
  hs.message = c.Suspended ~= nil and describe(c.Suspended) or "spec.suspend is true"
  return hs
end
if c.Reconciling ~= nil and c.Reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(c.Reconciling)
  return hs
end
local ready = c.Ready
if ready == nil or ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = ready ~= nil and describe(ready) or "No Ready condition yet"
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end
if transient[ready.reason] then
  hs.status = "Progressing"
else
  hs.status = "Degraded"
end
hs.message = describe(ready)
return hs
