module github.com/taskpass/taskpass/tools/vault

go 1.25.3

godebug x509negativeserial=1

require (
	github.com/hashicorp/vault v1.14.1
	github.com/hashicorp/vault/sdk v0.9.2-0.20230721171514-bf23fe8636b0
)
