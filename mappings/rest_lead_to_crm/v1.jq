# rest_lead_to_crm v1: validated lead record from POST /api/v1/leads (INTERFACES.md §1) plus
# the hub's `source` (taken from the partner's API key) -> canonical lead for the CRM store.
#
# Input:  {"source_ref", "name", "mobile", "province", "city", "interested_model",
#          "campaign_code", "remark", "source"}
# Output: {"entity": "lead", "source", "source_ref", "customer": {"name", "mobile",
#          "province", "city"}, "interested_model", "campaign_code", "remark"}
#         with null or missing fields left out.

# Drops null-valued keys, so an absent optional field stays absent downstream.
def compact: map_values(select(. != null));

if (.source | type) != "string" then
  error("lead record has no source (it comes from the partner's API key)")
elif (.source_ref | type) != "string" then
  error("lead record has no source_ref")
else
  {
    entity: "lead",
    source,
    source_ref,
    customer: ({name, mobile, province, city} | compact),
    interested_model,
    campaign_code,
    remark
  }
  | compact
end
