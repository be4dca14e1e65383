# crm_campaign_to_dcs v1: CRM store campaign assignment event -> the campaign task the DCS
# adapter sends as PublishCampaignTask (IF-07, INTERFACES.md §5).
#
# Input:  the campaign.assigned event (see crm_campaign_to_dms).
# Output: {"campaign_code", "name", "dealer_code", "start_date", "end_date", "target_count"}.

if .event != "campaign.assigned" then
  error("unsupported campaign event \(.event | tojson): expected campaign.assigned")
elif (.target_count | type) != "number" then
  error("campaign event has no target_count")
else
  {campaign_code, name, dealer_code, start_date, end_date, target_count}
end
