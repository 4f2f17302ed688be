# The ticket desk's rules behind the scope templates (docs/policy-engines.md). The templates already
# allowed the call (they stay the ceiling); these rules can only take it away:
#   - a refund only for a ticket of the delegating user's own region (user claim `region`);
#   - no writes outside business hours (data.ticket_desk.business_hours, UTC, from the
#     request time in input.context.time, so tests and the demo set the hours they need).
# The broker asks `taskpass/ticket_desk/decision` and reads { allow, reason }.
package taskpass.ticket_desk

hours := data.ticket_desk.business_hours

regions := data.ticket_desk.ticket_regions

decision := {"allow": true} if count(reasons) == 0

decision := {"allow": false, "reason": concat("; ", sort([r | some r in reasons]))} if count(reasons) > 0

reasons contains msg if {
	input.action.name == "issue_refund"
	not own_region
	msg := sprintf("refunds only for tickets of the user's own region (%s is in %s, the user in %s)", [
		input.resource.id,
		object.get(regions, ticket_id, "no known region"),
		object.get(input.subject.properties, ["user", "claims", "region"], "no region"),
	])
}

reasons contains msg if {
	input.action.properties.action_class != "read"
	not business_hours
	msg := sprintf("no writes outside business hours (%02d:00-%02d:00 UTC)", [hours.start, hours.end])
}

ticket_id := trim_prefix(input.resource.id, "tickets/")

# Fails closed: no user, no region claim, or a ticket without a known region is not "own region".
own_region if regions[ticket_id] == input.subject.properties.user.claims.region

business_hours if {
	[h, _, _] := time.clock(time.parse_rfc3339_ns(input.context.time))
	h >= hours.start
	h < hours.end
}
